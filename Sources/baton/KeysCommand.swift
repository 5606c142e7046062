import ArgumentParser
import BatonCore
import BatonRuntime
import Foundation

/// `baton keys`: the keys that prove who sends a record (docs/operations.md#keys).
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Make the keys of a namespace: the server's signing key, the coordinators' trusted keys and result secret, operators' own keys.",
        subcommands: [Init.self, AddOperator.self])

    static func directory(_ given: String?) throws -> URL {
        guard let dir = given ?? ProcessInfo.processInfo.environment[KeySettings.directoryVariable], !dir.isEmpty else {
            throw CLIFailure("name the folder: baton keys ... DIR (or set \(KeySettings.directoryVariable))")
        }
        return URL(fileURLWithPath: dir)
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create what is missing in a keys folder: signing.key (for baton serve), trusted-keys.yaml and result.secret (for coordinators).",
            discussion: """
                Files that exist are kept, so running it again changes nothing. Give the folder to the processes with \
                BATON_KEYS_DIR (or each file with BATON_SIGNING_KEY, BATON_TRUSTED_KEYS, BATON_RESULT_SECRET). \
                Coordinators need trusted-keys.yaml and result.secret only; keep signing.key on the server's host.
                """)
        @Argument(help: "The folder (default: $BATON_KEYS_DIR).") var directory: String?

        func run() async throws {
            let dir = try KeysCommand.directory(directory)
            let written = try KeyDirectory.initialize(dir)
            print(written.isEmpty ? "\(dir.path): every key is there already" : written.map { "wrote \($0)" }.joined(separator: "\n"))
        }
    }

    struct AddOperator: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-operator",
            abstract: "Make an operator's own key (it signs only as them, only with these roles) and trust it.",
            discussion: """
                Writes DIR/operator-NAME.key and adds its public key to DIR/trusted-keys.yaml (give that file to every \
                coordinator again). The operator runs `baton instances ...` and `baton signal ...` without a server with \
                BATON_SIGNING_KEY=DIR/operator-NAME.key.
                """)
        @Argument(help: "The operator's name, as their actions will name them.") var name: String
        @Option(help: "The roles the key may act with.") var roles: [String] = [Principal.operatorRole]
        @Option(help: "The keys folder (default: $BATON_KEYS_DIR).") var dir: String?

        func run() async throws {
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "._-@".contains($0) }) else {
                throw CLIFailure("the name '\(name)' may hold letters, digits and . _ - @ only")
            }
            let file = try KeyDirectory.addOperatorKey(try KeysCommand.directory(dir), principal: Principal(subject: name, roles: Set(roles)))
            print("wrote \(file.path); \(name)'s public key is trusted in \(KeySettings.trustedKeysFile)")
        }
    }
}

import ArgumentParser
import BatonClient
import BatonConformance
import BatonKafka
import BatonRuntime
import Foundation
import Logging

@main
struct Baton: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton",
        abstract: "Baton: a Kafka-native workflow and saga engine.",
        subcommands: [
            Validate.self, Graph.self, Definitions.self, Start.self, Status.self, Tasks.self, Instances.self, SignalCommand.self,
            CoordinatorCommand.self, WorkersCommand.self, Serve.self, AuthCommand.self, Demo.self, Bench.self, Topics.self, KafkaCheck.self, Tail.self, Watch.self,
            Conformance.self, ConformanceWorkerCommand.self,
            TriggersCommand.self, TriggerBench.self, KeysCommand.self,
        ])

    /// Refuses a command name that does not exist before the arguments are parsed: `baton frobnicate --help`
    /// would otherwise print the root's help and exit 0, as if the command existed.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let message = unknownCommand(in: arguments) {
            FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            let failure = (error as? CLIFailure) ?? (error as? ClientError).map(CLIFailure.init)
            guard let failure else { exit(withError: error) }  // ArgumentParser's own: help, usage errors, ExitCode
            FileHandle.standardError.write(Data("Error: \(failure.description)\n".utf8))
            Foundation.exit(failure.exitCode)
        }
    }

    /// The error for the first word of `arguments` that names no subcommand of the command before it, walking
    /// down from `baton` while the words are commands (nil when every word is one, or an option comes first).
    static func unknownCommand(in arguments: [String]) -> String? {
        var command: any ParsableCommand.Type = Baton.self
        var path = ["baton"]
        for word in arguments {
            let configuration = command.configuration
            guard !word.hasPrefix("-"), !configuration.subcommands.isEmpty, configuration.defaultSubcommand == nil, word != "help" else { return nil }
            guard let next = configuration.subcommands.first(where: { $0._commandName == word || $0.configuration.aliases.contains(word) }) else {
                let names = configuration.subcommands.map { $0._commandName }
                return "'\(word)' is not a command of '\(path.joined(separator: " "))'; its commands: \(names.joined(separator: ", ")) (see '\(path.joined(separator: " ")) --help')"
            }
            command = next
            path.append(word)
        }
        return nil
    }
}

/// Options every command that talks to Kafka takes.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Kafka bootstrap servers, host:port[,host:port] (default: $BATON_BROKERS, else 127.0.0.1:9092).")
    var brokers: String?

    @Option(help: "Prefix of every engine topic name, as in <namespace>.events (default: $BATON_NAMESPACE, else baton).")
    var namespace: String?

    @Option(help: "How long a request to the brokers may take before it fails, in seconds.")
    var timeout: Int = 10

    @Option(help: ArgumentHelp(
        "A file of librdkafka properties (key=value lines) for every Kafka client, such as security.protocol and sasl.* (default: $BATON_KAFKA_CONFIG).",
        valueName: "file"))
    var kafkaConfig: String?

    @Option(help: ArgumentHelp(
        "How long a fetch may wait at the broker for new records, such as 5ms or 500ms (default: $BATON_FETCH_WAIT, else 5ms). See docs/operations.md.",
        valueName: "duration"))
    var fetchWait: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: error; info for the coordinator, workers, triggers and conformance workers, notice for serve).")
    var logLevel: Logger.Level?

    @Option(help: ArgumentHelp(
        "Whether coordinators and workers read a partition again when its offsets jump: auto (on Tansu, which shows later records first), on, off (default: $BATON_GAP_REREADS, else auto).",
        valueName: "mode"))
    var gapRereads: GapRereads?

    var resolvedGapRereads: GapRereads { gapRereads ?? environment["BATON_GAP_REREADS"].flatMap(GapRereads.init(rawValue:)) ?? .auto }

    var environment: [String: String] { ProcessInfo.processInfo.environment }
    var resolvedBrokers: KafkaBrokers { brokers.map(KafkaBrokers.init) ?? .fromEnvironment(environment) }
    var resolvedNamespace: String { namespace ?? environment["BATON_NAMESPACE"] ?? "baton" }

    /// A logger at `--log-level`, else at `level`: what the command logs when nobody asked (a one-shot command
    /// only its errors, a service what it does).
    func makeLogger(_ label: String, default level: Logger.Level = .error) -> Logger {
        bootstrapLogging()
        var logger = Logger(label: label)
        logger.logLevel = logLevel ?? level
        return logger
    }

    var resolvedKafkaConfig: String? { kafkaConfig ?? environment["BATON_KAFKA_CONFIG"].flatMap { $0.isEmpty ? nil : $0 } }
    var resolvedFetchWait: String? { fetchWait ?? environment["BATON_FETCH_WAIT"].flatMap { $0.isEmpty ? nil : $0 } }

    var clientConfiguration: KafkaClientConfiguration {
        get throws {
            var c = KafkaClientConfiguration(brokers: resolvedBrokers)
            c.clientID = "baton-cli"
            c.requestTimeout = .seconds(timeout)
            if let text = resolvedFetchWait { try c.setFetchWait(text, source: fetchWait != nil ? "--fetch-wait" : "BATON_FETCH_WAIT") }
            if let path = resolvedKafkaConfig { try c.loadProperties(path, source: kafkaConfig != nil ? "--kafka-config" : "BATON_KAFKA_CONFIG") }
            return c
        }
    }

    /// The options that pass these settings on to a child process.
    var childArguments: [String] {
        var arguments = ["--brokers", resolvedBrokers.bootstrapServers, "--log-level", (logLevel ?? .error).rawValue, "--timeout", String(timeout)]
        if let path = resolvedKafkaConfig { arguments += ["--kafka-config", path] }
        if let wait = resolvedFetchWait { arguments += ["--fetch-wait", wait] }
        arguments += ["--gap-rereads", resolvedGapRereads.rawValue]
        return arguments
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension GapRereads: ExpressibleByArgument {}

private let loggingBootstrapped: Void = LoggingSystem.bootstrap(StreamLogHandler.standardError)
func bootstrapLogging() { _ = loggingBootstrapped }

/// A failure the CLI reports as one clear line and a non-zero exit, without a stack of wrappers: 1, or the status
/// of the client error's kind (`ClientError.exitCode`, docs/api.md "Errors and exit codes").
struct CLIFailure: Error, CustomStringConvertible {
    var description: String
    var exitCode: Int32 = 1
    init(_ description: String) { self.description = description }
    init(_ error: ClientError) {
        description = error.description
        exitCode = error.exitCode
    }
}

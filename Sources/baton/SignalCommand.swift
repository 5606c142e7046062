import ArgumentParser
import BatonClient
import BatonCore
import Foundation

/// `baton signal ID NAME [--data JSON]`: named data for an instance, for a `signal` step waiting for it and for
/// `$.signals.NAME` in conditions and templates.
struct SignalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signal",
        abstract: "Send a signal (named data) to an instance: it completes a signal step waiting for it and is kept for conditions ($.signals.NAME).",
        discussion: """
            The name must be one the instance's workflow accepts (its `signals`, or a signal step's `signal`). The \
            signal is checked against the instance first (an unknown name or a finished instance is refused with \
            the reason), then sent, and the command waits until a coordinator applied it. Without --data the \
            signal's value is true.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The instance id.") var id: String
    @Argument(help: "The signal's name.") var name: String
    @Option(help: "The signal's data, as JSON (default: true).") var data: String?
    @Option(help: "Who sends it (recorded with it).") var by: String = ProcessInfo.processInfo.environment["USER"] ?? "cli"
    @Option(help: "Seconds to wait for a coordinator to apply it; 0 sends it unchecked and does not wait.") var wait = 30

    func run() async throws {
        let payload: JSON?
        do { payload = try data.map { try JSON.parse(Data($0.utf8)) } } catch { throw CLIFailure("--data is not valid JSON: \(error)") }
        try await connection.withClient { client in
            if wait > 0 {
                let state = try await client.signalAndWait(instanceID: id, name: name, data: payload, by: by, timeout: .seconds(wait))
                print("signal '\(name)' applied to \(id): now \(state.status.rawValue)")
            } else {
                let request = try await client.signal(instanceID: id, name: name, data: payload, by: by)
                print("sent signal '\(name)' to \(id) (request \(request))")
            }
        }
    }
}

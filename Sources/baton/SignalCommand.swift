import ArgumentParser
import BatonClient
import BatonCore
import BatonRuntime
import BatonWire
import NIOHTTP1
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
            signal's value is true. With --server (or BATON_SERVER) it goes through the server, as the signed-in \
            operator; else with an operator's own key (BATON_SIGNING_KEY) it is signed as that operator; else it is \
            a service's signal, which names nobody.
            """)

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var server: ServerOptions
    @Argument(help: "The instance id.") var id: String
    @Argument(help: "The signal's name.") var name: String
    @Option(help: "The signal's data, as JSON (default: true).") var data: String?
    @Option(help: "Seconds to wait for a coordinator to apply it; 0 sends it unchecked and does not wait.") var wait = 30

    func run() async throws {
        let payload: JSON?
        do { payload = try data.map { try JSON.parse(Data($0.utf8)) } } catch { throw CLIFailure("--data is not valid JSON: \(error)") }
        if let api = try server.api() {
            let path = "/v1/instances/\(APIClient.escape(id))/signals/\(APIClient.escape(name))"
            let (status, answer) = try await api.call(.POST, path, body: .object(payload.map { ["data": $0] } ?? [:]))
            print(status == 202 ? "sent signal '\(name)' to \(id): \(answer["detail"]?.stringValue ?? "not applied yet")" : "signal '\(name)' applied to \(id): now \(answer["instance"]?["status"]?.stringValue ?? "?")")
            return
        }
        let signer = KeySettings.fromEnvironment().hasSigningKey ? try operatorSigner() : nil
        try await connection.withClient(signer: signer) { client in
            if wait > 0 {
                let state = try await client.signalAndWait(instanceID: id, name: name, data: payload, timeout: .seconds(wait))
                print("signal '\(name)' applied to \(id): now \(state.status.rawValue)")
            } else {
                let request = try await client.signal(instanceID: id, name: name, data: payload)
                print("sent signal '\(name)' to \(id) (request \(request))")
            }
        }
    }
}

/// The operator's own key (BATON_SIGNING_KEY, or signing.key in BATON_KEYS_DIR), for operator actions and signals
/// sent without a server: it must be bound to the operator (`baton keys add-operator`), never a server's key.
func operatorSigner() throws -> AuthoritySigner {
    let signer: AuthoritySigner
    do { signer = try KeySettings.fromEnvironment().loadSigner() } catch {
        throw CLIFailure("\(error); or send it through the server: --server URL (or BATON_SERVER) with a token")
    }
    guard signer.boundTo != nil else {
        throw CLIFailure(
            "the signing key '\(signer.keyID)' is a server's, which may act for anyone: the command line signs only with an operator's own key (`baton keys add-operator NAME`), or goes through the server (--server)")
    }
    return signer
}

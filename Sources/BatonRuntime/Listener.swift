import Synchronization

/// What an HTTP listener (`baton serve`, a process's /metrics port) reports when it cannot start: an error
/// thrown before it listens is about its address (a port another process holds, an address not on this host),
/// so it is given with that address and the option that sets it, not as `bind(...): Address already in use`.
public final class ListenerStart: Sendable {
    public let host: String
    public let port: Int
    public let option: String
    private let listening = Mutex(false)

    /// `option` names what sets the port, such as `--port`.
    public init(host: String, port: Int, option: String) {
        self.host = host
        self.port = port
        self.option = option
    }

    /// Called once the listener listens: errors after this are not about the address.
    public func markListening() { listening.withLock { $0 = true } }

    /// Runs the listener until it ends; an error before it listened becomes a `ListenError`.
    public func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch where !listening.withLock({ $0 }) && !(error is CancellationError) {
            throw ListenError(host: host, port: port, option: option, reason: "\(error)")
        }
    }
}

/// A listener that could not listen on its address.
public struct ListenError: Error, CustomStringConvertible {
    public let host: String
    public let port: Int
    public let option: String
    public let reason: String

    public var description: String {
        "cannot listen on \(host):\(port) (\(option)): \(reason). Is another process listening on port \(port)? Stop it, or choose another port with \(option)."
    }
}

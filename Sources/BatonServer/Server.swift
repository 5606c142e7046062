import BatonClient
import BatonReadModel
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// `baton serve`: the read model, the JSON API under `/v1`, and the web console, in one service.
public struct BatonServer: Service {
    public let service: BatonService
    public let host: String
    public let port: Int
    let onRunning: @Sendable (Int) async -> Void

    public init(service: BatonService, host: String = "127.0.0.1", port: Int = 8080, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) {
        self.service = service
        self.host = host
        self.port = port
        self.onRunning = onRunning
    }

    /// The router with every route: problems for every error, the body guard, the principal, then the API
    /// and the console.
    public func router() -> Router<ServerContext> {
        let router = Router(context: ServerContext.self)
        router.add(middleware: HTTPMetricsMiddleware())
        // A span per request (a no-op unless the process traces); a start sent from it carries its context.
        router.add(middleware: TracingMiddleware())
        router.add(middleware: ProblemMiddleware())
        router.add(middleware: BodyGuardMiddleware())
        router.add(middleware: PrincipalMiddleware(auth: service.auth))
        service.addAPI(to: router)
        Console(service: service).add(to: router)
        return router
    }

    /// Runs the read model and the HTTP server until a graceful shutdown; the server answers `/readyz` with
    /// 503 until the read model has caught up.
    public func run() async throws {
        let model = service.model
        let logger = service.logger
        let onRunning = self.onRunning
        let app = Application(
            router: router(),
            configuration: .init(address: .hostname(host, port: port), serverName: "baton"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.notice("baton serve listening", metadata: ["address": "http://\(host):\(port)"])
                await onRunning(port)
            },
            logger: logger)
        // Whichever ends first ends both: the server on a graceful shutdown, the read model on a failure.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await model.run() }
            group.addTask { try await app.run() }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}

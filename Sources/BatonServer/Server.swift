import BatonClient
import BatonReadModel
import BatonRuntime
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `baton serve`: the read model, the JSON API under `/v1`, and the web console, in one service.
public struct BatonServer: Service {
    public let service: BatonService
    public let host: String
    public let port: Int
    public let limits: EdgeLimits
    let onRunning: @Sendable (Int) async -> Void

    public init(
        service: BatonService, host: String = "127.0.0.1", port: Int = 8080, limits: EdgeLimits = EdgeLimits(),
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        self.service = service
        self.host = host
        self.port = port
        self.limits = limits
        self.onRunning = onRunning
    }

    /// Raises this process's soft limit of open descriptors to its hard limit (each connection takes one);
    /// returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur > rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }

    /// The router with every route: problems for every error, the body guard, the principal, then the API
    /// and the console.
    public func router() -> Router<ServerContext> {
        // HEAD is answered wherever GET is (the GET's headers, no body).
        let router = Router(context: ServerContext.self, options: .autoGenerateHeadEndpoints)
        router.add(middleware: HTTPMetricsMiddleware())
        // A span per request (a no-op unless the process traces); a start sent from it carries its context.
        router.add(middleware: TracingMiddleware())
        router.add(middleware: ProblemMiddleware())
        router.add(middleware: BodyGuardMiddleware())
        router.add(middleware: PrincipalMiddleware(auth: service.auth))
        service.addAPI(to: router)
        Console(service: service).add(to: router)
        // Added last, so it wraps only the answer for a path no route matched: there, a path known with other
        // methods is a 405 with `Allow`, not a 404.
        router.add(middleware: MethodNotAllowedMiddleware(routes: router.routes.map { ($0.path, $0.method) }))
        return router
    }

    /// Runs the read model and the HTTP server until a graceful shutdown; the server answers `/readyz` with
    /// 503 until the read model has caught up.
    public func run() async throws {
        let model = service.model
        let logger = service.logger
        let onRunning = self.onRunning
        let limits = self.limits
        let registry = ConnectionRegistry(limit: limits.maxConnections)
        let start = ListenerStart(host: host, port: port, option: "--port")
        let app = Application(
            router: router(),
            server: HTTPServerBuilder { responder in GuardedHTTP1Channel(responder: responder, limits: limits, registry: registry) },
            // A deep accept queue: a burst of connections waits there to be let in (or to make room) instead
            // of being dropped by the kernel half-open.
            configuration: .init(address: .hostname(host, port: port), serverName: "baton", backlog: 2048),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                start.markListening()
                logger.notice("baton serve listening", metadata: ["address": "http://\(host):\(port)"])
                await onRunning(port)
            },
            logger: logger)
        // Whichever ends first ends both: the server on a graceful shutdown, the read model on a failure.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await model.run() }
            group.addTask { try await start.run { try await app.run() } }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}

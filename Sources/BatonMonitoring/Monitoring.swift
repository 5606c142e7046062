import BatonRuntime
import Foundation
import Hummingbird
import Logging
import Metrics
import OTel
import Prometheus
import ServiceLifecycle
import Synchronization
import Tracing

/// What a Baton process shows of itself: Prometheus metrics, health and readiness on a port of its own, and
/// its spans exported over OTLP/HTTP when tracing is configured. Libraries (the coordinator, the worker SDK,
/// the server) only emit through swift-metrics and swift-distributed-tracing; an executable calls
/// `Monitoring.bootstrap` once, first thing, and runs the services it returns.
public enum Monitoring {
    /// The registry the process's metrics go to, once bootstrapped.
    private static let bootstrapped = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Sends every metric of this process to a Prometheus registry (swift-metrics can be bootstrapped once per
    /// process; a second call returns the same registry).
    public static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        bootstrapped.withLock { registry in
            if let registry { return registry }
            let made = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(makeFactory(registry: made))
            registry = made
            return made
        }
    }

    /// A factory that renders Baton's histograms with their own buckets (`MetricBuckets`).
    public static func makeFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = MetricBuckets.durations
        factory.valueHistogramBuckets = MetricBuckets.values
        return factory
    }

    /// Tracing settings, from the command line and the standard OpenTelemetry environment variables.
    public struct TracingSettings: Sendable {
        /// Where spans go (OTLP/HTTP), such as `http://collector:4318`; nil: from `OTEL_EXPORTER_OTLP_ENDPOINT`
        /// or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; tracing is off when none is set.
        public var endpoint: String?
        public var serviceName: String
        public var environment: [String: String]

        public init(endpoint: String?, serviceName: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
            self.endpoint = endpoint
            self.serviceName = serviceName
            self.environment = environment
        }

        /// Whether spans are exported: an endpoint is set, and the environment does not turn tracing off.
        public var enabled: Bool {
            if environment["OTEL_SDK_DISABLED"]?.lowercased() == "true" || environment["OTEL_TRACES_EXPORTER"]?.lowercased() == "none" { return false }
            return endpoint != nil || environment["OTEL_EXPORTER_OTLP_ENDPOINT"] != nil || environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] != nil
        }
    }

    public struct TracingError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Bootstraps the process's tracer with OpenTelemetry's (W3C trace context, parent-based sampling, batched
    /// OTLP/HTTP export) when tracing is enabled. Returns the tracer and the exporter's service, which must run
    /// (put it first in the service group, so that it stops last and flushes what the others ended).
    public static func bootstrapTracing(_ settings: TracingSettings, logger: Logger) throws -> (tracer: any Tracer, service: any Service)? {
        guard settings.enabled else { return nil }
        // swift-otel stops the process (fatalError) on these; refuse them with a message instead.
        if let propagators = settings.environment["OTEL_PROPAGATORS"] {
            let unsupported = propagators.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !["tracecontext", "none", ""].contains($0) }
            if !unsupported.isEmpty {
                throw TracingError(description: "OTEL_PROPAGATORS: \(unsupported.joined(separator: ", ")) not supported; Baton propagates W3C trace context only (tracecontext)")
            }
        }
        if let sampler = settings.environment["OTEL_TRACES_SAMPLER"], ["jaeger_remote", "parentbased_jaeger_remote", "xray"].contains(sampler) {
            throw TracingError(description: "OTEL_TRACES_SAMPLER: \(sampler) is not supported; use always_on, always_off, traceidratio or a parentbased_ one")
        }
        if let proto = settings.environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? settings.environment["OTEL_EXPORTER_OTLP_PROTOCOL"], proto == "grpc" {
            throw TracingError(description: "OTEL_EXPORTER_OTLP_PROTOCOL: grpc is not supported; use http/protobuf (the default) or http/json")
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = settings.serviceName
        configuration.diagnosticLogger = .custom(logger)
        configuration.diagnosticLogLevel = .warning
        configuration.propagators = [.traceContext]
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        if let endpoint = settings.endpoint {
            guard let url = URL(string: endpoint), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw TracingError(description: "--otlp-endpoint: '\(endpoint)' is not an http(s) URL such as http://collector:4318")
            }
            // Given in code, the endpoint is used as it is: the signal's path is added here, as the variable would.
            configuration.traces.otlpExporter.endpoint = endpoint.hasSuffix("/v1/traces") ? endpoint : endpoint.trimmingSuffix("/") + "/v1/traces"
        }
        do {
            let backend = try OTel.makeTracingBackend(configuration: configuration)
            InstrumentationSystem.bootstrap(backend.factory)
            return (backend.factory, backend.service)
        } catch {
            throw TracingError(description: "cannot set up tracing: \(error)")
        }
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        var s = self
        while s.hasSuffix(suffix) { s.removeLast(suffix.count) }
        return s
    }
}

/// `GET /metrics`, `/healthz` and `/readyz` on a port of the process's own (apart from any API it serves), so
/// that scraping and probes keep working whatever the rest of the process is busy with.
public struct MonitoringEndpoint: Service {
    public let host: String
    public let port: Int
    let registry: PrometheusCollectorRegistry
    let ready: @Sendable () -> Bool
    let logger: Logger
    let onRunning: @Sendable (Int) async -> Void
    let process: ProcessMetrics

    /// - Parameters:
    ///   - component: what the process is (`coordinator`, `worker`, `server`), the label of `baton_ready`.
    ///   - ready: whether the process does its job yet (its partitions rebuilt, its group joined).
    public init(
        host: String = "0.0.0.0", port: Int, component: String, registry: PrometheusCollectorRegistry, logger: Logger,
        ready: @escaping @Sendable () -> Bool, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        process = ProcessMetrics(component: component, factory: Monitoring.makeFactory(registry: registry))
        self.logger = logger
        self.onRunning = onRunning
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        let registry = self.registry
        let ready = self.ready
        let process = self.process
        router.get("metrics") { _, _ -> Response in
            process.setReady(ready())
            var buffer: [UInt8] = []
            buffer.reserveCapacity(16 << 10)
            registry.emit(into: &buffer)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        router.get("healthz") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
        }
        router.get("readyz") { _, _ -> Response in
            let isReady = ready()
            return Response(
                status: isReady ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: isReady ? "ready\n" : "not ready\n")))
        }
        return router
    }

    public func run() async throws {
        let logger = self.logger
        let host = self.host
        let onRunning = self.onRunning
        let start = ListenerStart(host: host, port: port, option: "--metrics-port")
        let app = Application(
            router: router(),
            configuration: .init(address: .hostname(host, port: port), serverName: "baton-monitoring"),
            onServerRunning: { channel in
                start.markListening()
                let port = channel.localAddress?.port ?? 0
                logger.info("metrics, health and readiness served", metadata: ["address": "http://\(host):\(port)/metrics"])
                await onRunning(port)
            },
            logger: logger)
        try await start.run { try await app.run() }
    }
}

import ArgumentParser
import BatonMonitoring
import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import Tracing

/// What the long-running commands (coordinator, workers, serve) show of themselves: metrics, health and
/// readiness on a port of their own, and spans over OTLP. See docs/observability.md.
struct MonitoringOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Serve /metrics (Prometheus), /healthz and /readyz on this port (default: $BATON_METRICS_PORT; no metrics when unset).", valueName: "port"))
    var metricsPort: Int?

    @Option(help: ArgumentHelp("The address /metrics, /healthz and /readyz are served on.", valueName: "address"))
    var metricsHost = "0.0.0.0"

    @Option(help: ArgumentHelp(
        "Export spans over OTLP/HTTP to this collector, such as http://localhost:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT; no tracing when unset). The OTEL_* variables apply.",
        valueName: "url"))
    var otlpEndpoint: String?

    var resolvedMetricsPort: Int? {
        get throws {
            if let metricsPort { return metricsPort }
            guard let text = ProcessInfo.processInfo.environment["BATON_METRICS_PORT"], !text.isEmpty else { return nil }
            guard let port = Int(text) else { throw CLIFailure("BATON_METRICS_PORT: '\(text)' is not a port number") }
            return port
        }
    }

    func validate() throws {
        if let port = try resolvedMetricsPort, !(0...65535).contains(port) { throw ValidationError("--metrics-port: \(port) is not a port (0 to 65535)") }
    }

    /// Bootstraps the process's metrics (when a port is given) and tracing (when an endpoint is): call it before
    /// making the coordinator, workers or server, whose metrics are made with the process's factory.
    func bootstrap(serviceName: String, logger: Logger) throws -> Monitored {
        let registry = try resolvedMetricsPort.map { _ in Monitoring.bootstrapMetrics() }
        let tracing: (tracer: any Tracer, service: any Service)?
        do {
            tracing = try Monitoring.bootstrapTracing(.init(endpoint: otlpEndpoint, serviceName: serviceName), logger: logger)
        } catch let error as Monitoring.TracingError {
            throw CLIFailure(error.description)
        }
        if tracing != nil { logger.info("tracing on: spans are exported over OTLP/HTTP", metadata: ["service": "\(serviceName)"]) }
        return Monitored(options: self, registry: registry, tracing: tracing, logger: logger)
    }
}

/// A process's metrics registry and tracer, once bootstrapped.
struct Monitored {
    let options: MonitoringOptions
    let registry: PrometheusCollectorRegistry?
    let tracing: (tracer: any Tracer, service: any Service)?
    let logger: Logger

    var tracer: (any Tracer)? { tracing?.tracer }

    /// The services to run around the process's own: the span exporter first (so that it stops last and
    /// sends what the others ended), then the metrics endpoint, then `main`.
    func services(component: String, ready: @escaping @Sendable () -> Bool, main: [any Service]) throws -> [any Service] {
        var services: [any Service] = []
        if let tracing { services.append(tracing.service) }
        if let registry, let port = try options.resolvedMetricsPort {
            services.append(
                MonitoringEndpoint(host: options.metricsHost, port: port, component: component, registry: registry, logger: logger, ready: ready) { port in
                    print("baton \(component): metrics on http://\(options.metricsHost):\(port)/metrics")
                    fflush(nil)  // every stream: a wrapper script or a test waits for this line
                })
        }
        return services + main
    }
}

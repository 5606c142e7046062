import BatonRuntime
import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import Metrics

/// Counts requests by method, route (the matched path pattern, such as `/v1/instances/{id}`: a bounded label)
/// and status, and times them until the handler answered (a live stream is timed until its first byte).
struct HTTPMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let requests: LabeledMetric<Counter>
    let duration: LabeledMetric<CoreMetrics.Timer>

    init(factory: any MetricsFactory = MetricsSystem.factory) {
        requests = .counter("baton_http_requests_total", labels: ["method", "route", "status"], factory: factory)
        duration = .timer("baton_http_request_duration_seconds", labels: ["method", "route"], factory: factory)
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let began = ContinuousClock.now
        let method = request.method.rawValue
        do {
            let response = try await next(request, context)
            record(method, context.endpointPath ?? "unmatched", response.status.code, since: began)
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            record(method, context.endpointPath ?? "unmatched", status, since: began)
            throw error
        }
    }

    func record(_ method: String, _ route: String, _ status: Int, since began: ContinuousClock.Instant) {
        requests(method, route, String(status)).increment()
        duration(method, route).record(duration: ContinuousClock.now - began)
    }
}

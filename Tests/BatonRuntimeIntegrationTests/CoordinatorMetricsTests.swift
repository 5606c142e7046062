import BatonClient
import BatonCoordinator
import BatonCore
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Metrics
import MetricsTestKit
import Testing

/// What the coordinator counts, read from its metrics factory (swift-metrics' TestMetrics) while a real
/// coordinator and workers run an instance into a timeout, a suspension and a cancellation.
@Suite("Metrics: what the coordinator counts", .timeLimit(.minutes(2)))
struct CoordinatorMetricsTests {
    static let workflow = """
        workflow_id: counted
        on_failure: { compensate: true, alert: true, then: suspend }
        steps:
          - { id: book, type: counted_svc, compensation: { type: counted_undo } }
          - { id: pay, type: counted_svc, depends_on: [book], timeout: 2s, retry: { max_attempts: 1 } }
        """

    @Test func timeoutsSuspensionsCancellationsAndTheGaugeOfInstancesAreCounted() async throws {
        let metrics = TestMetrics()
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register(Self.workflow)
            engine.startCoordinator { $0.metricsFactory = metrics }
            engine.startWorker("counted_svc") { ctx in
                // A payment service that hangs for the instances named so: the step times out (the timeout is long
                // enough for the others on a loaded machine; the worker's shutdown cancels the hang).
                if ctx.step == "pay", ctx.instanceID.hasPrefix("hang") { try await Task.sleep(for: .seconds(60)) }
                return [:]
            }
            engine.startWorker("counted_undo") { _ in [:] }

            _ = try await engine.start("counted", id: "ok-1")
            _ = try await engine.start("counted", id: "hang-1")
            try await engine.wait("ok-1", for: [.completed])
            let suspended = try await engine.wait("hang-1", for: [.suspended])
            #expect(suspended.suspension == .failure)

            func counter(_ label: String, _ dimensions: [(String, String)]) -> Int64 { metrics.counterTotal(label: label, dimensions: dimensions) }
            func held(_ status: InstanceStatus) -> Double? {
                (try? metrics.expectMeter("baton_instances", [("workflow", "counted"), ("status", status.rawValue)]))?.lastValue  // not made yet: none held
            }
            // Metrics are recorded once the transaction committed, just after the state a watcher sees.
            try await waitUntil("the suspension to be counted", timeout: .seconds(10)) { counter("baton_instances_suspended_total", [("workflow", "counted")]) == 1 }
            #expect(counter("baton_instances_suspended_total", [("workflow", "counted"), ("reason", "failure")]) == 1)
            #expect(counter("baton_step_attempts_total", [("workflow", "counted"), ("step", "pay"), ("outcome", "timed_out")]) == 1)
            #expect(counter("baton_step_attempts_total", [("workflow", "counted"), ("step", "pay"), ("outcome", "completed")]) == 1)
            #expect(counter("baton_step_attempts_total", [("workflow", "counted"), ("step", "book"), ("outcome", "completed")]) == 2)
            #expect(counter("baton_compensations_total", [("workflow", "counted"), ("step", "book"), ("outcome", "completed")]) == 1)
            #expect(counter("baton_alerts_total", []) >= 1)
            #expect(counter("baton_instances_started_total", [("workflow", "counted")]) == 2)
            #expect(counter("baton_instances_finished_total", [("workflow", "counted"), ("outcome", "completed")]) == 1)
            #expect(held(.suspended) == 1)
            #expect(held(.completed) == 1)
            #expect(held(.running) == 0)
            let timings = try metrics.expectTimer("baton_step_duration_seconds", [("workflow", "counted"), ("step", "pay")])
            #expect(timings.values.count == 2)
            #expect(timings.values.allSatisfy { $0 >= 0 })

            // An operator cancels it: it ends cancelled (what it did was undone already), and leaves the suspended.
            _ = try await engine.client.operateAndWait(instanceID: "hang-1", .cancel, reason: "the customer gave up", as: .person("ops", "operator"))
            try await waitUntil("the cancellation to be counted", timeout: .seconds(10)) {
                counter("baton_instances_finished_total", [("workflow", "counted"), ("outcome", "cancelled")]) == 1
            }
            #expect(held(.suspended) == 0)
            #expect(held(.cancelled) == 1)
            let durations = try metrics.expectTimer("baton_instance_duration_seconds", [("workflow", "counted")])
            #expect(durations.values.count == 2)
            #expect(counter("baton_coordinator_transactions_total", [("result", "committed")]) > 0)
            #expect(counter("baton_coordinator_events_total", [("result", "dead_lettered")]) == 0)
        }
    }
}

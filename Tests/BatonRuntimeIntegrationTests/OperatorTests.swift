import BatonClient
import BatonCore
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Synchronization
import Testing

@Suite("Runtime: operators act on suspended instances", .serialized, .timeLimit(.minutes(3)))
struct OperatorTests {
    /// The seed's error example, end to end: the charge fails until the gateway is fixed; the instance is
    /// compensated and suspended; `baton instances retry` runs it again and it completes.
    @Test func aSuspendedInstanceIsRetriedFromTheCommandLineAndCompletes() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: ops
                on_failure: { compensate: true, alert: true, then: suspend }
                steps:
                  - { id: reserve, type: svc, compensation: { type: undo } }
                  - { id: charge, type: svc, depends_on: [reserve], retry: { max_attempts: 2, initial_backoff: 100ms, jitter: 0 } }
                  - { id: ship, type: svc, depends_on: [charge], input: { payment: $.steps.charge.output.payment_id } }
                """)
            engine.startCoordinator()
            let gatewayFixed = Atomic<Bool>(false)
            let runs = Recorder<String>()
            let shipped = Recorder<JSON>()
            engine.startWorker("svc") { ctx in
                runs.add("\(ctx.step)#\(ctx.attempt)")
                switch ctx.step {
                case "charge":
                    guard gatewayFixed.load(ordering: .acquiring) else { throw StepFailure("gateway down") }
                    return ["payment_id": .string("pay-\(ctx.attempt)")]
                case "ship":
                    shipped.add(ctx.input)
                    return [:]
                default:
                    return [:]
                }
            }
            engine.startWorker("undo") { _ in [:] }
            let id = try await engine.start("ops")
            let suspended = try await engine.wait(id, for: [.suspended, .failed, .completed])
            #expect(suspended.status == .suspended)
            #expect(suspended.steps[0].units.first?.compensation == .done)
            // An operator finds it among the suspended instances, with the reason.
            let listed = try await engine.baton(["instances", "list", "--status", "suspended"])
            #expect(listed.status == 0)
            #expect(listed.output.contains("\(id)  ops v1  suspended  started "), "\(listed.output)")
            #expect(listed.output.contains("'charge' failed after 2 attempts: gateway down"), "\(listed.output)")

            // Refused before anything is sent, with the coordinator's own reason.
            let notFailed = try await engine.baton(["instances", "skip", id, "--step", "ship"])
            #expect(notFailed.status == 5, "refused: \(notFailed.output)")
            #expect(notFailed.output.contains("skip refused for '\(id)' (suspended): not applicable: 'ship' has not failed"), "\(notFailed.output)")
            let unknown = try await engine.baton(["instances", "retry", "no-such-instance"])
            #expect(unknown.status == 4, "not found: \(unknown.output)")
            #expect(unknown.output.contains("no instance 'no-such-instance'"), "\(unknown.output)")

            gatewayFixed.store(true, ordering: .releasing)
            // Signed with the operator's own key (`engine.baton` gives BATON_SIGNING_KEY): no --by to assert.
            let retried = try await engine.baton(["instances", "retry", id])
            #expect(retried.status == 0, "\(retried.output)")
            #expect(retried.output.contains("retry applied to \(id): now running"), "\(retried.output)")
            let state = try await engine.wait(id, for: [.completed, .failed])
            #expect(state.status == .completed)
            // The undone reservation ran again; the charge took a third attempt; shipping saw its payment.
            #expect(runs.all.filter { $0.hasPrefix("reserve") } == ["reserve#1", "reserve#2"])
            #expect(runs.all.filter { $0.hasPrefix("charge") } == ["charge#1", "charge#2", "charge#3"])
            #expect(shipped.all == [["payment": "pay-3"]])

            // A finished instance takes no more commands.
            let again = await #expect(throws: ClientError.self) { try await engine.client.operateAndWait(instanceID: id, .retry, as: .person("ops", "operator")) }
            #expect(again?.description.contains("not applicable: the instance is completed") == true)
        }
    }

    @Test func skipGivesItsOutputToDependentsAndCancelEndsTheInstance() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: manual
                on_failure: { compensate: false, alert: true, then: suspend }
                steps:
                  - { id: charge, type: svc, retry: { max_attempts: 1 } }
                  - { id: ship, type: svc, depends_on: [charge], input: { payment: $.steps.charge.output.payment_id } }
                """)
            engine.startCoordinator()
            let shipped = Recorder<JSON>()
            engine.startWorker("svc") { ctx in
                if ctx.step == "charge" { throw StepFailure("card declined", retryable: false) }
                shipped.add(ctx.input)
                return [:]
            }
            let toSkip = try await engine.start("manual")
            let toCancel = try await engine.start("manual")
            for id in [toSkip, toCancel] { #expect(try await engine.wait(id, for: [.suspended, .failed]).status == .suspended) }
            #expect(Set(try await engine.client.instances(statuses: [.suspended], workflowID: "manual").map(\.instanceID)) == [toSkip, toCancel])
            #expect(try await engine.client.instances(statuses: [.running, .completed]).isEmpty)

            let skipped = try await engine.client.operateAndWait(instanceID: toSkip, .skip, step: "charge", output: ["payment_id": "paid-by-phone"], as: .person("ops", "operator"))
            #expect(skipped.steps[0].status == .skipped)
            #expect(try await engine.wait(toSkip, for: [.completed, .failed]).status == .completed)
            #expect(shipped.all == [["payment": "paid-by-phone"]])

            let cancelled = try await engine.client.operateAndWait(instanceID: toCancel, .cancel, reason: "customer left", as: .person("ops", "operator"))
            #expect(cancelled.status == .cancelled)
            #expect(cancelled.reason?.contains("customer left") == true)
        }
    }
}

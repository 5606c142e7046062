import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import Foundation
import Testing

extension OneAtATime {
    @Suite("Production faults: a broker outage", .serialized, .timeLimit(.minutes(8)))
    struct OutageTests {
        static let seed = #"{"workflow_id":"order_fulfillment","steps":[{"id":"validate","type":"service_call","depends_on":[]},{"id":"reserve","type":"service_call","depends_on":["validate"]},{"id":"charge","type":"service_call","depends_on":["reserve"]},{"id":"ship","type":"service_call","depends_on":["charge"]},{"id":"notify","type":"notification","depends_on":["ship"]}]}"#

        /// The broker freezes for 45 s (longer than the producers' 30 s delivery timeout) while orders keep
        /// arriving at 20 a second and results are in flight. When it comes back, the same coordinator and worker
        /// processes answer again, with no restart, and every order completes. A worker told to stop during the
        /// outage ends within its grace period and bounded closes, with results it could not deliver handed back.
        @Test func theEngineAnswersAgainAfterABrokerOutageLongerThanTheDeliveryTimeoutAndLosesNothing() async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            try await withEngine(partitions: 3, kafka: broker.client) { engine in
                _ = try await engine.register(Self.seed)
                let coordinator = try engine.process(["coordinator"])
                let workers = try (0..<2).map { _ in try engine.process(["example-workers", "--pool", "service_call", "--pool", "notification", "--concurrency", "64"]) }
                let leaving = try engine.process(["example-workers", "--pool", "service_call", "--pool", "notification", "--concurrency", "64"])
                defer {
                    for p in workers + [coordinator, leaving] { p.kill9() }
                }
                // Warm: groups joined, partitions taken.
                let warm = try await engine.start("order_fulfillment", id: "warm")
                try await engine.wait(warm, for: [.completed], timeout: .seconds(120))

                // Orders at 20/s, each sent until the broker has it (as a client that must not lose an order does).
                let sent = Recorder<String>()
                let clock = ContinuousClock()
                let began = clock.now
                let total = 1_300  // 65 s: 10 before the outage, 45 during, 10 after
                let offering = Task {
                    try await withThrowingDiscardingTaskGroup { group in
                        for i in 0..<total {
                            try await Task.sleep(until: began + .milliseconds(i * 50), clock: clock)
                            let id = "order-\(i)"
                            group.addTask {
                                while true {
                                    do {
                                        _ = try await engine.client.start(workflowID: "order_fulfillment", input: ["order_id": .string(id)], instanceID: id, partitions: engine.partitions)
                                        sent.add(id)
                                        return
                                    } catch {
                                        try await Task.sleep(for: .seconds(1))
                                    }
                                }
                            }
                        }
                    }
                }
                defer { offering.cancel() }
                try await Task.sleep(until: began + .seconds(10), clock: clock)
                broker.pause()
                try await Task.sleep(for: .seconds(20))
                // A worker asked to stop mid-outage stops within its grace period (10 s) and bounded closes.
                let asked = clock.now
                leaving.signal(SIGTERM)
                let status = await leaving.exitStatus()
                let took = clock.now - asked
                #expect(took < .seconds(25), "a worker asked to stop during the outage took \(took); its log ends:\n\(leaving.output.suffix(3000))")
                #expect(status == 0, "it exited with \(status); its log ends:\n\(leaving.output.suffix(2000))")
                try await Task.sleep(until: began + .seconds(55), clock: clock)
                broker.resume()
                try await offering.value

                let ids = Set(sent.all)
                #expect(ids.count == total)
                let allDone = await engine.watcher.wait(for: ids, toBe: [.completed], timeout: .seconds(240))
                if !allDone {
                    let stuck = ids.filter { engine.watcher.status($0) != .completed }.sorted()
                    Issue.record("\(stuck.count) orders did not complete: \(stuck.prefix(10)) ...")
                    Issue.record("coordinator log ends:\n\(coordinator.output.suffix(3000))")
                    Issue.record("worker log ends:\n\(workers[0].output.suffix(3000))")
                }
                // Answered by the same processes: none was restarted.
                #expect(coordinator.isRunning && workers.allSatisfy(\.isRunning))
            }
        }
    }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import Foundation
import Testing

extension OneAtATime {
    @Suite("Production faults: SIGTERM during a broker outage", .serialized, .timeLimit(.minutes(6)))
    struct StopDuringOutageTests {
        enum Outage: String, CustomTestStringConvertible {
            /// SIGSTOP for 65 s: connections stay open and nothing answers (the worst case: every request waits its
            /// timeout), past the 60 s transaction timeout and the 30 s after which failing partitions send alerts.
            case frozen
            /// Killed 35 s before: connections are refused.
            case gone
            var testDescription: String { rawValue }
            var length: Duration { self == .frozen ? .seconds(65) : .seconds(35) }
        }

        /// A coordinator with live instances (transactions in flight, steps running) and a worker with commands
        /// that will not finish, both cut off from the broker (past the 30 s delivery and request timeouts, so that
        /// their producers and consumers are stuck), then sent SIGTERM: each exits with status 0 within 30 s
        /// (docs/deploy.md), leaving what it could not hand back to its transactions' timeouts.
        @Test(arguments: [Outage.frozen, .gone])
        func aCoordinatorAndAWorkerToldToStopDuringAnOutageExitWithinThirtySeconds(outage: Outage) async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            let engine = try await Engine(partitions: 3, kafka: broker.client)
            _ = try await engine.register(OutageTests.seed)
            let coordinator = try engine.process(["coordinator"])
            let worker = try engine.process(["example-workers", "--pool", "service_call", "--pool", "notification", "--concurrency", "16"])
            defer {
                for p in [coordinator, worker] { p.kill9() }
            }
            let warm = try await engine.start("order_fulfillment", id: "warm")
            try await engine.wait(warm, for: [.completed], timeout: .seconds(120))
            // Steps that hang (the example workers sleep on "slow"), so that the worker has commands in flight.
            for i in 0..<3 { _ = try await engine.start("order_fulfillment", input: ["order_id": .string("slow-\(i)")], id: "slow-\(i)") }
            // Orders at 20/s until the outage and through it, so that transactions are open when it begins.
            let clock = ContinuousClock()
            let offering = Task {
                try await withThrowingDiscardingTaskGroup { group in
                    for i in 0..<2_000 {
                        try await Task.sleep(for: .milliseconds(50))
                        group.addTask {
                            _ = try? await engine.client.start(  // during the outage a start fails: that is expected here
                                workflowID: "order_fulfillment", input: ["order_id": .string("order-\(i)")], instanceID: "order-\(i)", partitions: engine.partitions)
                        }
                    }
                }
            }
            defer { offering.cancel() }
            try await waitUntil("orders to complete before the outage", timeout: .seconds(60)) { engine.watcher.status("order-20") == .completed }
            switch outage {
            case .frozen: broker.pause()
            case .gone: broker.stop()
            }
            try await Task.sleep(for: outage.length)

            let asked = clock.now
            coordinator.signal(SIGTERM)
            worker.signal(SIGTERM)
            async let coordinatorExit = (coordinator.exitStatus(), clock.now - asked)
            async let workerExit = (worker.exitStatus(), clock.now - asked)
            let ((cs, coordinatorTook), (ws, workerTook)) = await (coordinatorExit, workerExit)
            print("SIGTERM after \(outage.rawValue) broker for \(outage.length): coordinator exited \(cs) after \(coordinatorTook), worker \(ws) after \(workerTook)")
            #expect(coordinatorTook < .seconds(30), "the coordinator took \(coordinatorTook) to exit; its log ends:\n\(coordinator.output.suffix(4000))")
            #expect(workerTook < .seconds(30), "the worker took \(workerTook) to exit; its log ends:\n\(worker.output.suffix(4000))")
            #expect(cs == 0, "the coordinator exited with \(cs); its log ends:\n\(coordinator.output.suffix(3000))")
            #expect(ws == 0, "the worker exited with \(ws); its log ends:\n\(worker.output.suffix(3000))")
            offering.cancel()
            broker.stop()
            await engine.shutdown()
        }
    }
}

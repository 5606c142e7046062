import BatonClient
import BatonCore
import BatonKafka
import BatonServer
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

        /// A coordinator with live instances (transactions in flight, steps running), a worker with commands that
        /// will not finish, `baton triggers` and `baton serve`, all cut off from the broker (past the 30 s delivery
        /// and request timeouts, so that their producers and consumers are stuck), then sent SIGTERM: each exits
        /// with status 0 within 30 s (docs/deploy.md), leaving what it could not hand back to its transactions'
        /// timeouts.
        @Test(arguments: [Outage.frozen, .gone])
        func everyProcessToldToStopDuringAnOutageExitsWithinThirtySeconds(outage: Outage) async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            try await withEngine(partitions: 3, kafka: broker.client) { engine in
                _ = try await engine.register(OutageTests.seed)
                let authPath = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID()).yaml").path
                try AuthFile(tokens: [AuthFile.newToken(subject: "ops", roles: ["admin"]).entry]).save(authPath)
                defer { try? FileManager.default.removeItem(atPath: authPath) }  // a temporary file: nothing to do if it is gone
                let coordinator = try engine.process(["coordinator"])
                let worker = try engine.process(["example-workers", "--pool", "service_call", "--pool", "notification", "--concurrency", "16"])
                // With no trigger definitions and no client: they stop as every process does, but have little to hand back.
                let triggers = try engine.process(["triggers"])
                let server = try engine.process(["serve", "--port", "0", "--auth", authPath])
                defer {
                    for p in [coordinator, worker, triggers, server] { p.kill9() }
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

                let processes = [("coordinator", coordinator), ("worker", worker), ("triggers", triggers), ("server", server)]
                for (name, p) in processes { #expect(p.isRunning, "the \(name) ended during the outage; its log ends:\n\(p.output.suffix(3000))") }
                let asked = clock.now
                for (_, p) in processes { p.signal(SIGTERM) }
                let exits = await withTaskGroup(of: (String, Int32, Duration).self) { group in
                    for (name, p) in processes { group.addTask { (name, await p.exitStatus(), clock.now - asked) } }
                    return await group.reduce(into: [String: (status: Int32, took: Duration)]()) { $0[$1.0] = ($1.1, $1.2) }
                }
                print("SIGTERM after \(outage.rawValue) broker for \(outage.length): " + processes.map { "\($0.0) exited \(exits[$0.0]!.status) after \(exits[$0.0]!.took)" }.joined(separator: ", "))
                for (name, p) in processes {
                    let exit = exits[name]!
                    #expect(exit.took < .seconds(30), "the \(name) took \(exit.took) to exit; its log ends:\n\(p.output.suffix(4000))")
                    #expect(exit.status == 0, "the \(name) exited with \(exit.status); its log ends:\n\(p.output.suffix(3000))")
                }
                offering.cancel()
                broker.stop()
            }
        }
    }
}

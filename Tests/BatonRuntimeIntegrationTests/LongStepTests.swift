import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Testing

extension OneAtATime {
    @Suite("Production faults: long steps and heartbeats", .serialized, .timeLimit(.minutes(5)))
    struct LongStepTests {
        /// A member whose only slot is busy for 90 s (three times `max.poll.interval`) keeps polling with its
        /// partitions paused: it stays in the group, the command is not delivered to the other member, and the
        /// step runs once. Commands behind it wait and then run.
        @Test func aNinetySecondStepWithEverySlotBusyRunsOnce() async throws {
            try await withEngine(partitions: 1) { engine in
                _ = try await engine.register("""
                    workflow_id: slow
                    steps: [{ id: crunch, type: batch, timeout: 5m, retry: { max_attempts: 1 } }]
                    """)
                engine.startCoordinator()
                let runs = Recorder<String>()
                for member in ["a", "b"] {
                    engine.startWorker("batch", concurrency: 1, configure: { $0.maxPollInterval = .seconds(30) }) { ctx in
                        runs.add("\(ctx.instanceID)@\(member)")
                        if ctx.instanceID == "long" { try await Task.sleep(for: .seconds(90)) }  // the step's own work takes this long
                        return ["by": .string(member)]
                    }
                }
                let long = try await engine.start("slow", id: "long")
                try await waitUntil("the long step to start", timeout: .seconds(60)) { runs.all.contains { $0.hasPrefix("long@") } }
                let behind = try await engine.start("slow", id: "behind")
                let state = try await engine.wait(long, for: [.completed, .failed], timeout: .seconds(150))
                #expect(state.status == .completed)
                #expect(runs.all.filter { $0.hasPrefix("long@") }.count == 1, "run \(runs.all)")
                #expect(try await engine.wait(behind, for: [.completed, .failed], timeout: .seconds(60)).status == .completed)
                #expect(runs.all.filter { $0.hasPrefix("behind@") }.count == 1, "run \(runs.all)")
            }
        }

        /// Heartbeats keep a long attempt alive well past its heartbeat timeout and show its progress; a worker
        /// that goes silent (as a dead one does) has its attempt failed and retried after the heartbeat timeout,
        /// not after the step's 30 minutes.
        @Test func heartbeatsKeepALongStepAliveAndSilenceGetsItRetriedLongBeforeItsTimeout() async throws {
            try await withEngine(partitions: 1) { engine in
                _ = try await engine.register("""
                    workflow_id: beat
                    steps: [{ id: crunch, type: batch, heartbeat_timeout: 6s, retry: { max_attempts: 2, initial_backoff: 100ms } }]
                    """)
                engine.startCoordinator()
                let silent = Gate()
                defer { silent.open() }  // also when the test fails: a handler held at it would keep the worker from stopping
                let progress = Recorder<JSON>()
                engine.startWorker("batch", concurrency: 4) { ctx in
                    if ctx.instanceID == "alive" {
                        for i in 1...8 {  // 16 s of work, a heartbeat every 2 s
                            await ctx.heartbeat(["done": .number(Double(i))])
                            try await Task.sleep(for: .seconds(2))
                        }
                        return ["beats": 8]
                    }
                    if ctx.attempt == 1 {
                        await silent.wait()  // hangs without a sign of life, as a dead worker would
                        throw CancellationError()
                    }
                    return ["attempt": .number(Double(ctx.attempt))]
                }
                let alive = try await engine.start("beat", id: "alive")
                let quiet = try await engine.start("beat", id: "quiet")
                try await waitUntil("progress to show", timeout: .seconds(60)) {
                    if let p = engine.watcher.state(alive)?.steps[0].units.first?.progress { progress.add(p) }
                    return !progress.all.isEmpty
                }
                let retried = try await engine.wait(quiet, for: [.completed, .failed], timeout: .seconds(60))
                #expect(retried.status == .completed)
                #expect(retried.steps[0].output == ["attempt": 2])
                #expect(retried.steps[0].units[0].attempt == 2)
                let done = try await engine.wait(alive, for: [.completed, .failed], timeout: .seconds(60))
                #expect(done.status == .completed)
                #expect(done.steps[0].units[0].attempt == 1, "a live, beating attempt was not retried")
            }
        }
    }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Testing

extension OneAtATime {
    /// Long steps that heartbeat every second against a 6 s heartbeat timeout, while the coordinator that owns
    /// their partitions dies or freezes. The new owner takes the partitions after the old one's session expired
    /// (10 s, longer than the heartbeat timeout), so every heartbeat timer looks overdue to it, with the heartbeats
    /// that re-armed them queued on the partition. None of those steps may be presumed dead: each runs once.
    @Suite("Production faults: takeovers with queued heartbeats", .serialized, .timeLimit(.minutes(5)))
    struct TakeoverTests {
        static let beat = """
            workflow_id: beat
            steps: [{ id: crunch, type: batch, timeout: 10m, heartbeat_timeout: 6s, retry: { max_attempts: 2, initial_backoff: 100ms } }]
            """

        /// A worker whose steps heartbeat every second for `seconds`; every run recorded as "instance/attempt".
        func startWorker(_ engine: Engine, runs: Recorder<String>, seconds: Int) {
            engine.startWorker("batch", concurrency: 64) { ctx in
                runs.add("\(ctx.instanceID)/\(ctx.attempt)")
                guard ctx.instanceID.hasPrefix("long") else { return [:] }
                for _ in 0..<seconds {
                    await ctx.heartbeat()
                    try await Task.sleep(for: .seconds(1))  // the step's own work, reporting progress each second
                }
                return ["beats": .number(Double(seconds))]
            }
        }

        /// A coordinator alone, warm (joined, its partitions taken, one instance through).
        func warmCoordinator(_ engine: Engine) async throws -> BatonProcess {
            let first = try engine.process(["coordinator"])
            let warm = try await engine.start("beat", id: "warm")
            try await engine.wait(warm, for: [.completed], timeout: .seconds(90))
            return first
        }

        func expectEachRanOnceAndCompleted(_ engine: Engine, _ ids: [String], runs: Recorder<String>) async throws {
            for id in ids {
                let state = engine.watcher.state(id)
                #expect(state?.status == .completed, "\(id): \(state?.status.rawValue ?? "unknown") \(state?.reason ?? "")")
            }
            let byInstance = Dictionary(grouping: runs.all.filter { $0.hasPrefix("long") }) { String($0.split(separator: "/")[0]) }
            let twice = byInstance.filter { $0.value.count != 1 }
            guard let first = twice.keys.sorted().first else { return }
            // What the events partition holds for the first instance that ran twice, to tell why.
            let history = try await engine.records(engine.names.events).filter { $0.keyString == first }.map { m in
                let kind = m.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } ?? "?"
                return "\(m.offset) \(m.timestamp ?? 0) \(kind) \(kind == "timer.fired" ? String(decoding: m.value ?? Data(), as: UTF8.self) : "")"
            }
            Issue.record("run more than once (presumed dead): \(twice.keys.sorted()); \(first)'s events:\n\(history.joined(separator: "\n"))")
        }

        @Test func heartbeatingStepsSurviveTheirCoordinatorKilledAndAStaleOrEarlyFiringChangesNothing() async throws {
            try await withEngine(partitions: 4) { engine in
                _ = try await engine.register(Self.beat)
                let runs = Recorder<String>()
                startWorker(engine, runs: runs, seconds: 30)
                let first = try await warmCoordinator(engine)
                defer { first.kill9() }
                let second = try engine.process(["coordinator"])
                defer { second.kill9() }
                // The second joined and took its share: the first owns the rest, with instances on them.
                _ = try await second.waitForLine("took partition", timeout: .seconds(60))
                let ids = try await (0..<24).asyncMap { try await engine.start("beat", id: "long-\($0)") }
                try await waitUntil("every step to run", timeout: .seconds(60)) { Set(runs.all).count >= 25 }

                // Firings nobody should act on: one for a due time the heartbeats have moved since, one for the
                // time the timer is armed for but before it (as a coordinator whose clock runs ahead would write).
                for id in ids.prefix(4) {
                    func heartbeatTimer() -> ArmedTimer? { engine.watcher.state(id)?.timers.first { $0.key.kind == .heartbeat } }
                    try await waitUntil("\(id) to have a heartbeat timer", timeout: .seconds(30)) { heartbeatTimer() != nil }
                    let armed = try #require(heartbeatTimer())
                    for dueAt in [armed.dueAt - 2_000, armed.dueAt] {
                        try await engine.client.sendEvent(TimerMessage(instanceID: id, timer: armed.key, dueAt: dueAt), kind: .timerFired, instanceID: id)
                    }
                }

                first.kill9()
                #expect(await engine.watcher.wait(for: Set(ids), toBe: [.completed, .failed, .suspended], timeout: .seconds(120)))
                try await expectEachRanOnceAndCompleted(engine, ids, runs: runs)
                #expect(second.output.contains("applied the events queued when the partition was taken"), "the new owner held its timers")
            }
        }

        @Test func heartbeatingStepsSurviveTheirCoordinatorFrozenForFortySeconds() async throws {
            try await withEngine(partitions: 2) { engine in
                _ = try await engine.register(Self.beat)
                let runs = Recorder<String>()
                startWorker(engine, runs: runs, seconds: 60)
                let frozen = try await warmCoordinator(engine)
                defer {
                    frozen.signal(SIGCONT)
                    frozen.kill9()
                }
                let ids = try await (0..<12).asyncMap { try await engine.start("beat", id: "long-\($0)") }
                try await waitUntil("every step to run", timeout: .seconds(60)) { Set(runs.all).count >= 13 }
                frozen.signal(SIGSTOP)
                let other = try engine.process(["coordinator"])
                defer { other.kill9() }
                // The fault is the freeze itself, forty seconds long; the other takes the partitions meanwhile.
                try await Task.sleep(for: .seconds(40))
                frozen.signal(SIGCONT)
                #expect(await engine.watcher.wait(for: Set(ids), toBe: [.completed, .failed, .suspended], timeout: .seconds(120)))
                try await expectEachRanOnceAndCompleted(engine, ids, runs: runs)
            }
        }
    }
}

extension OneAtATime {
    /// Issue 20: a takeover far behind. While no coordinator runs, `BATON_TAKEOVER_LAG` starts (5,000 in the suite;
    /// 50,000 at size) are queued on the events partitions, among the heartbeats of long steps and after the
    /// start reports of steps that hang. The new owner fires nothing until it has applied what was queued when it
    /// took the partitions: then every hung step's overdue timeout fires once, and no heartbeating step is presumed dead.
    @Suite("Production faults: a takeover behind a queue of events", .serialized, .timeLimit(.minutes(10)))
    struct TakeoverLagTests {
        @Test func overdueTimersFireOnceWhenTheNewOwnerReachesItsAssignmentMark() async throws {
            let lag = Int(ProcessInfo.processInfo.environment["BATON_TAKEOVER_LAG"] ?? "") ?? 5_000
            try await withEngine(partitions: 2) { engine in
                _ = try await engine.register(TakeoverTests.beat)
                _ = try await engine.register("""
                    workflow_id: stall
                    steps: [{ id: stuck, type: stall, timeout: 4s, retry: { max_attempts: 1 } }]
                    """)
                _ = try await engine.register("""
                    workflow_id: queued
                    steps: [{ id: approve, type: human_task, assignee: "role:ops", timeout: 48h }]
                    """)
                let runs = Recorder<String>()
                TakeoverTests().startWorker(engine, runs: runs, seconds: 40)
                engine.startWorker("stall", concurrency: 16) { ctx in
                    runs.add("\(ctx.instanceID)/\(ctx.attempt)")
                    try await Task.sleep(for: .seconds(600))  // a service that never answers
                    return [:]
                }
                let first = try await TakeoverTests().warmCoordinator(engine)
                defer { first.kill9() }
                let long = try await (0..<12).asyncMap { try await engine.start("beat", id: "long-\($0)") }
                let stalled = try await (0..<12).asyncMap { try await engine.start("stall", id: "stalled-\($0)") }
                // Their step timeouts are armed (4 s from the start reports) and not due yet when the coordinator dies.
                try await waitUntil("every stalled step to be reported started", timeout: .seconds(60)) {
                    stalled.allSatisfy { engine.watcher.state($0)?.steps[0].units.first?.heartbeatAt != nil }
                }
                try await waitUntil("every long step to run", timeout: .seconds(60)) { runs.all.filter { $0.hasPrefix("long") }.count >= 12 }
                first.kill9()
                let killed = ContinuousClock.now
                for i in 0..<lag {
                    try await engine.client.start(workflowID: "queued", input: [:], instanceID: "queued-\(i)", partitions: engine.partitions, wait: false)
                }
                try await engine.client.flush()
                // The outage itself: long enough for every stalled timeout and heartbeat timer to be overdue.
                try await Task.sleep(until: killed + .seconds(8))
                let second = try engine.process(["coordinator"])
                defer { second.kill9() }

                #expect(await engine.watcher.wait(for: Set(stalled + long), toBe: [.completed, .failed, .suspended], timeout: .seconds(420)))
                _ = try await second.waitForLine("applied the events queued when the partition was taken", timeout: .seconds(10))
                try await TakeoverTests().expectEachRanOnceAndCompleted(engine, long, runs: runs)
                for id in stalled {
                    let state = engine.watcher.state(id)
                    #expect(state?.steps[0].error?.contains("timed out after 4s") == true, "\(id): \(state?.status.rawValue ?? "") \(state?.reason ?? "")")
                }
                #expect(runs.all.filter { $0.hasPrefix("stalled") }.count == 12, "each stalled step ran once")
                // Each overdue timeout fired once, behind the queued starts (past the assignment mark).
                let events = try await engine.records(engine.names.events)
                var lastQueued: [Int32: Int64] = [:]
                for m in events where m.keyString?.hasPrefix("queued-") == true { lastQueued[m.partition] = max(lastQueued[m.partition] ?? -1, m.offset) }
                for id in stalled {
                    let firings = events.filter { $0.keyString == id && $0.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } == "timer.fired" }
                    #expect(firings.count == 1, "\(id): \(firings.count) firings")
                    for f in firings { #expect(f.offset > lastQueued[f.partition] ?? -1, "\(id) fired at offset \(f.offset), before the queued starts ended") }
                }
                #expect(await engine.watcher.wait(for: Set((0..<lag).map { "queued-\($0)" }), toBe: [.waiting], timeout: .seconds(120)), "every queued start taken")
            }
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}

import BatonCore
import Foundation
import PropertyBased
import Synchronization
import Testing

/// A small deterministic generator, so that a failing seed replays exactly.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
}

/// A random workflow: up to 8 steps, each depending on a random subset of the earlier ones.
func randomWorkflow(_ rng: inout SplitMix) throws -> (Workflow, JSON) {
    let n = Int.random(in: 1...8, using: &rng)
    var steps: [String] = []
    var input: [String: JSON] = [:]
    for i in 0..<n {
        let deps = (0..<i).filter { _ in rng.chance(0.35) }.map { "s\($0)" }
        var fields = ["id: s\(i)", "depends_on: [\(deps.joined(separator: ", "))]"]
        if rng.chance(0.12) {
            fields.append("type: human_task")
            fields.append("assignee: role:r\(i)")
            fields.append("timeout: \(Int.random(in: 1...5, using: &rng))s")
            switch Int.random(in: 0...2, using: &rng) {
            case 0: fields.append("on_timeout: reject")
            case 1: fields.append("on_timeout: fail")
            default: fields.append("on_timeout: { action: escalate, escalate_to: role:boss, then: reject }")
            }
        } else {
            fields.append("type: t\(i % 3)")
            fields.append("timeout: \(Int.random(in: 1...5, using: &rng))s")
            fields.append("retry: { max_attempts: \(Int.random(in: 1...3, using: &rng)), initial_backoff: 100ms, max_backoff: 1s }")
            if rng.chance(0.25) { fields.append("heartbeat_timeout: \(Int.random(in: 100...900, using: &rng))ms") }
            if rng.chance(0.5) { fields.append("compensation: { type: undo\(i), timeout: 2s, retry: { max_attempts: 2, initial_backoff: 100ms } }") }
            if rng.chance(0.2) {
                input["items\(i)"] = .array((0..<Int.random(in: 0...3, using: &rng)).map { .number(Double($0)) })
                let cap = Int.random(in: 0...2, using: &rng)
                fields.append(cap == 0 ? "for_each: $.input.items\(i)" : "for_each: { items: $.input.items\(i), max_concurrency: \(cap) }")
            }
        }
        if rng.chance(0.15) {
            input["flag\(i)"] = .bool(rng.chance(0.5))
            fields.append("when: \"$.input.flag\(i) == true\"")
        }
        steps.append("  - { \(fields.joined(separator: ", ")) }")
    }
    let policy = "on_failure: { compensate: \(rng.chance(0.8)), alert: true, then: \(rng.chance(0.5) ? "fail" : "suspend") }"
    let timeout = rng.chance(0.2) ? "timeout: \(Int.random(in: 5...30, using: &rng))s\n" : ""
    let yaml = "workflow_id: random\n\(timeout)\(policy)\nsteps:\n\(steps.joined(separator: "\n"))"
    return (try DefinitionLoader.load(Data(yaml.utf8)), .object(input))
}

/// What a run saw, for the checks.
struct RunChecker {
    let workflow: Workflow
    var dispatchedAttempts: Set<String> = []
    var compensationAttempts: Set<String> = []
    var descendants: [Set<Int>] = []

    init(_ workflow: Workflow) {
        self.workflow = workflow
        descendants = Array(repeating: [], count: workflow.steps.count)
        for s in workflow.topologicalOrder.reversed() {
            for d in workflow.dependents[s] { descendants[s].formUnion(descendants[d].union([d])) }
        }
    }

    mutating func check(_ t: Transition) {
        for effect in t.effects {
            switch effect {
            case .dispatch(let c):
                let s = workflow.index[c.step]!
                for d in workflow.dependencies[s] {
                    let status = t.state.steps[d].status
                    #expect(status == .completed || status == .skipped, "\(c.step) dispatched while its dependency \(workflow.steps[d].id) is \(status)")
                }
                let key = "\(c.step)/\(c.item ?? -1)/\(c.attempt)"
                #expect(dispatchedAttempts.insert(key).inserted, "attempt \(key) dispatched twice")
            case .createTask(let task):
                let key = "\(task.step)/-1/\(task.attempt)"
                #expect(dispatchedAttempts.insert(key).inserted, "task attempt \(key) created twice")
            case .compensate(let c):
                let s = workflow.index[c.step]!
                let key = "\(c.step)/\(c.item ?? -1)/\(c.attempt)"
                #expect(compensationAttempts.insert(key).inserted, "compensation \(key) dispatched twice")
                // Everything completed later that depends on this step is undone already.
                for d in descendants[s] where workflow.steps[d].compensation != nil {
                    for unit in t.state.steps[d].units where unit.status == .completed {
                        #expect(unit.compensation == .done, "\(c.step) compensated before its dependent \(workflow.steps[d].id)")
                    }
                }
            default: break
            }
        }
    }
}

@Suite("Saga properties over random DAGs and random event orders")
struct SagaPropertyTests {
    @Test func invariantsHoldForRandomRuns() async {
        let tally = Tally()
        await propertyCheck(count: ProcessInfo.processInfo.environment["BATON_PROPERTY_RUNS"].flatMap(Int.init) ?? 400, input: Gen.int(in: 0...Int.max)) { seed in
            runOnce(seed: UInt64(seed), tally: tally)
        }
        // The random runs must reach every ending and the interesting paths, or they prove little.
        let seen = tally.counts.withLock { $0 }
        for what in ["completed", "failed", "suspended", "cancelled", "compensated", "retried", "human", "forEach", "skipped", "heartbeat", "heartbeatTimeout"] {
            #expect((seen[what] ?? 0) > 0, "no random run reached \(what): \(seen)")
        }
    }

    final class Tally: Sendable {
        let counts = Mutex<[String: Int]>([:])
        func add(_ what: String) { counts.withLock { $0[what, default: 0] += 1 } }
    }

    func runOnce(seed: UInt64, tally: Tally) {
        var rng = SplitMix(state: seed)
        guard let (workflow, input) = try? randomWorkflow(&rng) else {
            Issue.record("random workflow did not load (seed \(seed))")
            return
        }
        var checker = RunChecker(workflow)
        var now: Timestamp = 0
        var start = Saga.start(workflow, instanceID: "i", input: input, now: now)
        checker.check(start)
        var state = start.state
        var open: [SagaEvent] = []  // answers that workers and people can still give
        var heartbeats: [SagaEvent] = []  // signs of life workers may send (any number of times)
        var applied: [SagaEvent] = []
        var interventions = 0
        func collect(_ effects: [SagaEffect]) {
            for effect in effects {
                switch effect {
                case .dispatch(let c):
                    open.append(.stepCompleted(step: c.step, item: c.item, attempt: c.attempt, output: ["by": .string("\(c.attempt)")]))
                    heartbeats.append(.heartbeat(step: c.step, item: c.item, attempt: c.attempt, details: ["pct": .number(Double(c.attempt))]))
                case .compensate(let c): open.append(.compensationCompleted(step: c.step, item: c.item, attempt: c.attempt))
                case .createTask(let task): open.append(.taskDecided(step: task.step, attempt: task.attempt, approved: true, by: "p", comment: nil))
                default: break
                }
            }
        }
        collect(start.effects)
        start.effects = []

        for _ in 0..<4000 {
            if state.status.isFinished { break }
            if state.status == .suspended {
                // An operator steps in a few times; then the run ends suspended.
                guard interventions < 2, rng.chance(0.6) else { break }
                interventions += 1
                let t = Saga.apply(workflow, to: state, event: .resume(by: "ops", request: "resume-\(interventions)"), now: now)
                #expect(t.outcome == .applied)
                checker.check(t)
                state = t.state
                collect(t.effects)
                continue
            }
            var choices: [SagaEvent] = open
            choices += state.timers.map { .timerFired($0.key) }
            if let heartbeat = heartbeats.randomElement(using: &rng), rng.chance(0.3) { choices.append(heartbeat) }
            guard !choices.isEmpty else {
                Issue.record("stuck: \(state.status) with nothing outstanding (seed \(seed))")
                return
            }
            var event = choices.randomElement(using: &rng)!
            // Workers fail sometimes, people reject sometimes, operators cancel sometimes.
            switch event {
            case .stepCompleted(let step, let item, let attempt, _) where rng.chance(0.3):
                event = .stepFailed(step: step, item: item, attempt: attempt, error: "e", retryable: rng.chance(0.8))
            case .compensationCompleted(let step, let item, let attempt) where rng.chance(0.15):
                event = .compensationFailed(step: step, item: item, attempt: attempt, error: "e")
            case .taskDecided(let step, let attempt, _, _, _, _, _, _) where rng.chance(0.3):
                event = .taskDecided(step: step, attempt: attempt, approved: false, by: "p", comment: nil)
            default: break
            }
            if rng.chance(0.02) { event = .cancel(reason: "r", by: "ops", request: "c-\(rng.next())") }
            if case .timerFired(let key, _) = event, let due = state.timers.first(where: { $0.key == key })?.dueAt {
                now = max(now, due)
            } else {
                now += Timestamp.random(in: 0...500, using: &rng)
            }
            open.removeAll { sameAnswer($0, event) }
            if case .heartbeat = event {
                // A sign of life changes the state only for a running attempt; it is never a duplicate to refuse.
                let t = Saga.apply(workflow, to: state, event: event, now: now)
                if case .applied = t.outcome { tally.add("heartbeat") }
                state = t.state
                continue
            }

            let t = Saga.apply(workflow, to: state, event: event, now: now)
            if case .ignored = t.outcome {
                #expect(t.state == state && t.effects.isEmpty, "an ignored event changed something")
            } else {
                checker.check(t)
                // Applying the same event again changes nothing and says why.
                let again = Saga.apply(workflow, to: t.state, event: event, now: now)
                #expect(again.state == t.state && again.effects.isEmpty, "\(event) applied twice changed the state (seed \(seed))")
                if case .applied = again.outcome { Issue.record("\(event) was applied twice (seed \(seed))") }
                applied.append(event)
                if case .timerFired(let key, _) = event, key.kind == .heartbeat { tally.add("heartbeatTimeout") }
            }
            state = t.state
            collect(t.effects)
            // Noise: an old event arrives again, late.
            if let old = applied.randomElement(using: &rng), rng.chance(0.2) {
                let late = Saga.apply(workflow, to: state, event: old, now: now)
                #expect(late.state == state && late.effects.isEmpty, "a replayed \(old) changed the state (seed \(seed))")
            }
        }
        #expect([.completed, .failed, .suspended, .cancelled].contains(state.status), "run ended \(state.status) (seed \(seed))")
        tally.add(state.status.rawValue)
        let units = state.steps.flatMap(\.units)
        if units.contains(where: { $0.compensation == .done }) { tally.add("compensated") }
        if units.contains(where: { $0.attempt > 1 }) { tally.add("retried") }
        if workflow.steps.contains(where: \.isHumanTask) { tally.add("human") }
        if state.steps.contains(where: { $0.items.map { !$0.isEmpty } ?? false }) { tally.add("forEach") }
        if state.steps.contains(where: { $0.status == .skipped }) { tally.add("skipped") }
        // After a final failure, exactly the completed units of steps with a compensation were undone.
        let compensate = workflow.definition.onFailure.compensate
        if state.status == .failed || state.status == .cancelled || (state.status == .suspended && state.suspension == .failure) {
            for (s, step) in workflow.steps.enumerated() {
                for unit in state.steps[s].units {
                    let shouldUndo = compensate && step.compensation != nil && unit.status == .completed
                    #expect((unit.compensation == .done) == shouldUndo, "\(step.id): completed=\(unit.status == .completed) compensation=\(String(describing: unit.compensation)) (seed \(seed))")
                }
            }
        }
        if state.status == .completed {
            #expect(state.steps.allSatisfy { $0.status == .completed || $0.status == .skipped })
        }
        if state.status.isFinished {
            // Only the retention timer is left; when it fires, the instance is purged, once.
            #expect(state.timers.map(\.key.kind) == [.retention], "timers left: \(state.timers) (seed \(seed))")
            if let retention = state.timers.first {
                let purged = Saga.apply(workflow, to: state, event: .timerFired(retention.key), now: retention.dueAt)
                #expect(purged.effects == [.purge] && purged.state.timers.isEmpty)
                let again = Saga.apply(workflow, to: purged.state, event: .timerFired(retention.key), now: retention.dueAt)
                #expect(again.effects.isEmpty)
            }
        }
    }

    func sameAnswer(_ a: SagaEvent, _ b: SagaEvent) -> Bool {
        switch (a, b) {
        case (.stepCompleted(let s1, let i1, let a1, _), .stepCompleted(let s2, let i2, let a2, _)),
            (.stepCompleted(let s1, let i1, let a1, _), .stepFailed(let s2, let i2, let a2, _, _)):
            return s1 == s2 && i1 == i2 && a1 == a2
        case (.compensationCompleted(let s1, let i1, let a1), .compensationCompleted(let s2, let i2, let a2)),
            (.compensationCompleted(let s1, let i1, let a1), .compensationFailed(let s2, let i2, let a2, _)):
            return s1 == s2 && i1 == i2 && a1 == a2
        case (.taskDecided(let s1, let a1, _, _, _, _, _, _), .taskDecided(let s2, let a2, _, _, _, _, _, _)):
            return s1 == s2 && a1 == a2
        default:
            return false
        }
    }
}

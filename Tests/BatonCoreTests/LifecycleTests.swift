import BatonCore
import Foundation
import Testing

/// Heartbeats, retention, starts and outputs kept apart from the snapshot.
@Suite("Saga lifecycle: heartbeats, retention, starts, outputs")
struct LifecycleTests {
    static let long = """
        workflow_id: long
        steps:
          - { id: crunch, type: batch, timeout: 30m, heartbeat_timeout: 30s, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }
          - { id: report, type: svc, depends_on: [crunch] }
        """

    @Test func aHeartbeatKeepsALongAttemptAliveAndSilenceFailsItLongBeforeItsTimeout() throws {
        var sim = Simulator(try workflow(Self.long))
        let first = try #require(sim.command("crunch"))
        #expect(first.heartbeatTimeout == .seconds(30))
        // Heartbeats every 20 s for ten minutes: the attempt stays running, with its progress.
        for t in stride(from: Timestamp(20_000), through: 600_000, by: 20_000) {
            sim.advance(to: t)
            sim.send(.heartbeat(step: "crunch", item: nil, attempt: 1, details: ["done": .number(Double(t / 1000))]), at: t)
            #expect(sim.lastOutcome == .applied)
        }
        #expect(sim.status("crunch") == .active)
        #expect(sim.state.steps[0].units[0].progress == ["done": 600])
        #expect(sim.state.steps[0].units[0].heartbeatAt == 600_000)
        // Then silence: 30 s later the attempt has failed and a retry is armed, 29 minutes before its timeout.
        sim.advance(to: 630_000)
        #expect(sim.state.steps[0].units[0].status == .backoff)
        #expect(sim.state.steps[0].units[0].error == "no heartbeat for 30s: the worker is presumed dead")
        #expect(!sim.state.timers.contains { $0.key.kind == .stepTimeout || $0.key.kind == .heartbeat })
        sim.advance(to: 632_000)
        #expect(sim.command("crunch")?.attempt == 2)
        // A late heartbeat from the dead attempt changes nothing.
        let late = sim.send(.heartbeat(step: "crunch", item: nil, attempt: 1, details: nil), at: 633_000)
        #expect(late.effects.isEmpty)
        if case .ignored(.stale) = sim.lastOutcome {} else { Issue.record("expected stale, got \(sim.lastOutcome)") }
        // Completing disarms the heartbeat timeout.
        sim.complete("crunch", at: 640_000)
        #expect(!sim.state.timers.contains { $0.key.kind == .heartbeat })
    }

    @Test func attemptZeroIsUnknownLikeAnAttemptNeverDispatched() throws {
        var sim = Simulator(try workflow(Self.long))
        for attempt in [0, -1, 2] {
            sim.send(.stepCompleted(step: "crunch", item: nil, attempt: attempt, output: [:]))
            guard case .ignored(.unknown) = sim.lastOutcome else {
                Issue.record("attempt \(attempt): \(sim.lastOutcome)")
                continue
            }
        }
    }

    @Test func aFinishedInstanceIsPurgedWhenItsRetentionRunsOut() throws {
        let w = try workflow("""
            workflow_id: short_lived
            retention: 1h
            steps: [{ id: a, type: t }]
            """)
        var sim = Simulator(w)
        sim.complete("a", at: 1_000)
        #expect(sim.state.status == .completed)
        #expect(sim.state.timers == [ArmedTimer(key: TimerKey(kind: .retention), dueAt: 1_000 + 3_600_000)])
        sim.advance(to: 3_600_999)
        #expect(!sim.effects.contains { $0.effect == .purge })
        sim.advance(to: 3_601_000)
        #expect(sim.effects.last?.effect == .purge)
        // The coordinator's default applies when the definition says nothing.
        let plain = try workflow("workflow_id: p\nsteps: [{ id: a, type: t }]")
        var state = Saga.start(plain, instanceID: "x", input: [:], now: 0).state
        state = Saga.apply(plain, to: state, event: .stepCompleted(step: "a", item: nil, attempt: 1, output: [:]), now: 5, settings: SagaSettings(retention: .minutes(2))).state
        #expect(state.timers == [ArmedTimer(key: TimerKey(kind: .retention), dueAt: 120_005)])
    }

    @Test func aFinishedInstanceFromBeforeRetentionIsPurgedByItsFinishTime() throws {
        let w = try workflow("workflow_id: p\nsteps: [{ id: a, type: t }]")
        var state = Saga.apply(w, to: Saga.start(w, instanceID: "x", input: [:], now: 0).state, event: .stepCompleted(step: "a", item: nil, attempt: 1, output: [:]), now: 10).state
        state.timers = []  // as written before retention existed
        #expect(Saga.apply(w, to: state, event: .timerFired(TimerKey(kind: .retention)), now: .max).effects.isEmpty)
        state = Saga.armingRetention(state, workflow: w)
        #expect(state.timers == [ArmedTimer(key: TimerKey(kind: .retention), dueAt: 10 + Millis.days(7).value)])
        #expect(Saga.armingRetention(state, workflow: w) == state)
        let purged = Saga.apply(w, to: state, event: .timerFired(TimerKey(kind: .retention)), now: 10 + Millis.days(7).value)
        #expect(purged.effects == [.purge])
        #expect(Saga.apply(w, to: purged.state, event: .timerFired(TimerKey(kind: .retention)), now: .max).effects.isEmpty)
    }

    @Test func theFailureAlertListsCompensationsInTheOrderTheyRan() throws {
        var sim = Simulator(try workflow("""
            workflow_id: undo
            steps:
              - { id: reserve, type: s, compensation: { type: u } }
              - { id: hold, type: s, depends_on: [reserve], compensation: { type: u } }
              - { id: charge, type: s, depends_on: [hold], retry: { max_attempts: 1 } }
            """))
        sim.complete("reserve")
        sim.complete("hold")
        sim.fail("charge")
        #expect(sim.compensations.map(\.step) == ["hold"])
        sim.completeCompensation("hold")
        sim.completeCompensation("reserve")
        #expect(sim.alerts.last?.message.hasSuffix("compensated: hold, reserve") == true, "\(sim.alerts)")
    }

    @Test func aSecondStartIsTheSameStartOnlyWithTheSameWorkflowInputAndVersion() throws {
        let w = try workflow("workflow_id: w\nversion: 2\nsteps: [{ id: a, type: t }]")
        let state = Saga.start(w, instanceID: "i", input: ["x": 1, "y": ["a", "b"]], now: 0, request: "r1").state
        #expect(state.startRequest == "r1")
        #expect(try StateCodec.decode(StateCodec.encode(state)) == state)
        #expect(state.isSameStart(workflowID: "w", version: nil, input: .object(["y": ["a", "b"], "x": 1])))
        #expect(state.isSameStart(workflowID: "w", version: 2, input: ["x": 1, "y": ["a", "b"]]))
        #expect(!state.isSameStart(workflowID: "w", version: 1, input: ["x": 1, "y": ["a", "b"]]))
        #expect(!state.isSameStart(workflowID: "v", version: nil, input: ["x": 1, "y": ["a", "b"]]))
        #expect(!state.isSameStart(workflowID: "w", version: nil, input: ["x": 2, "y": ["a", "b"]]))
        #expect(!state.isSameStart(workflowID: "w", version: nil, input: ["x": 1, "y": ["b", "a"]]))
    }

    @Test func outputsLeaveTheSnapshotAndComeBackOnRestore() throws {
        let w = try workflow("""
            workflow_id: outs
            on_failure: { then: suspend }
            steps:
              - { id: a, type: t }
              - { id: each, type: t, depends_on: [a], for_each: $.steps.a.output.items }
              - { id: b, type: t, depends_on: [each], retry: { max_attempts: 1 } }
              - { id: c, type: t, depends_on: [b] }
            """)
        var sim = Simulator(w)
        sim.complete("a", output: ["items": [1, 2]])
        sim.complete("each", item: 0, output: ["n": 1])
        sim.complete("each", item: 1, output: ["n": 2])
        sim.fail("b")
        sim.send(.skip(step: "b", output: ["given": true], by: "ops", request: "r"))
        let full = sim.state
        let snapshot = try StateCodec.decode(StateCodec.encodeSnapshot(full))
        #expect(snapshot.storedOutputs.isEmpty)
        #expect(StateCodec.encodeSnapshot(full).count < StateCodec.encode(full).count)
        var restored = snapshot
        restored.restore(outputs: full.storedOutputs, workflow: w)
        #expect(restored == full)
        #expect(restored.steps[1].output == [["n": 1], ["n": 2]])
        // An output of an attempt the state no longer runs is left out.
        var stale = full.storedOutputs
        stale[0].attempt = 7
        var partial = snapshot
        partial.restore(outputs: stale, workflow: w)
        #expect(partial.steps[0].output == nil)
        // Only what is new since the last snapshot is written again.
        #expect(full.outputsAdded(since: full).isEmpty)
        #expect(full.outputsAdded(since: Saga.start(w, instanceID: "i-1", input: [:], now: 0).state).count == 4)
        #expect(full.outputsAdded(since: nil).count == 4)
    }

    @Test func heartbeatTimeoutsAreValidated() {
        let errors = definitionErrors("""
            workflow_id: bad
            steps:
              - { id: a, type: t, timeout: 10s, heartbeat_timeout: 10s }
              - { id: b, type: human_task, assignee: role:x, heartbeat_timeout: 1m }
              - { id: c, type: t, heartbeat_timeout: soon }
            """)
        #expect(errors.map(\.description) == [
            "steps[0].heartbeat_timeout: 10s is not shorter than the step's timeout 10s: it would never fire first",
            "steps[1].heartbeat_timeout: a human_task has no worker to send heartbeats; use timeout",
            "steps[2].heartbeat_timeout: 'soon' is not a duration; write it as 500ms, 30s, 30m, 48h, 7d or 1h30m",
        ])
    }
}

extension LifecycleTests {
    @Test func stepTypesAndWorkersMustMakeValidTopicNames() {
        let errors = definitionErrors("""
            workflow_id: pools
            steps:
              - { id: a, type: "send mail" }
              - { id: b, type: svc, worker: "payments/charge" }
              - { id: c, type: svc, compensation: { type: "undo!" } }
            """)
        #expect(errors.map(\.path) == ["steps[0].type", "steps[1].worker", "steps[2].compensation.type"])
        #expect(errors.first?.message.contains("names a worker pool (and its command topic)") == true)
    }
}

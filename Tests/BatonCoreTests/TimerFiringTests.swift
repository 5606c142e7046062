import BatonCore
import Testing

/// A timer's firing is an event on the partition like any other, so it can arrive late (a new owner of the
/// partition fired it before it read the heartbeats queued behind it), early (written by a coordinator whose clock
/// runs ahead) or forged. None of these may change an instance: only a firing for the due time the timer is armed
/// for, applied when that time has come on the applying coordinator's clock.
@Suite("Timers: a firing applies only to the timer it was for, when it is due")
struct TimerFiringTests {
    static let longStep = """
        workflow_id: crunching
        on_failure: { then: suspend }
        steps:
          - { id: crunch, type: batch, timeout: 30m, heartbeat_timeout: 6s, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }
        """

    func heartbeatTimer(_ sim: Simulator) -> ArmedTimer? { sim.state.timers.first { $0.key.kind == .heartbeat } }

    @Test func aFiringForAnOlderDueTimeDoesNotKillATimerThatAHeartbeatArmedAgain() throws {
        var sim = Simulator(try workflow(Self.longStep))
        let attempt = sim.command("crunch")!.attempt
        sim.send(.heartbeat(step: "crunch", item: nil, attempt: attempt, details: nil), at: 1_000)
        let stale = try #require(heartbeatTimer(sim))
        #expect(stale.dueAt == 7_000)
        // The firing for 7 s was written (the coordinator's clock said so) before the heartbeat of 6.5 s was applied.
        sim.send(.heartbeat(step: "crunch", item: nil, attempt: attempt, details: nil), at: 6_500)
        let t = sim.send(.timerFired(stale.key, dueAt: stale.dueAt), at: 7_100)
        guard case .ignored(.stale(let why)) = t.outcome else {
            Issue.record("a firing for an older due time was applied: \(t.outcome)")
            return
        }
        #expect(why.contains("armed again"))
        #expect(sim.status("crunch") == .active && sim.state.steps[0].units.last?.status == .running)
        #expect(heartbeatTimer(sim)?.dueAt == 12_500)
        #expect(sim.dispatched.count == 1)
    }

    @Test func aFiringBeforeItsTimerIsDueChangesNothingAndTheTimerStillFiresWhenDue() throws {
        var sim = Simulator(try workflow(Self.longStep))
        sim.start("crunch", at: 0)  // the worker's start report arms the heartbeat timeout
        let armed = try #require(heartbeatTimer(sim))
        // Written by a coordinator whose clock ran two hours ahead, or by anyone able to write the events topic.
        let early = sim.send(.timerFired(armed.key, dueAt: armed.dueAt), at: armed.dueAt - 1)
        guard case .ignored(.stale(let why)) = early.outcome else {
            Issue.record("an early firing was applied: \(early.outcome)")
            return
        }
        #expect(why.contains("not due until"))
        #expect(sim.status("crunch") == .active && sim.state.steps[0].units.last?.status == .running)
        #expect(heartbeatTimer(sim) == armed)
        sim.send(.timerFired(armed.key, dueAt: armed.dueAt), at: armed.dueAt)
        #expect(sim.lastOutcome == .applied)
        sim.advance(to: armed.dueAt + 1_000)
        #expect(sim.dispatched.count == 2, "the presumed-dead attempt is retried once its heartbeat timer is due")
    }

    @Test func aFiringWrittenBeforeFiringsCarriedTheirDueTimeStillAppliesWhenDue() throws {
        var sim = Simulator(try workflow(Self.longStep))
        sim.start("crunch", at: 0)  // the worker's start report arms the heartbeat timeout
        let armed = try #require(heartbeatTimer(sim))
        sim.send(.timerFired(armed.key), at: armed.dueAt - 1)
        #expect(sim.status("crunch") == .active && sim.state.steps[0].units.last?.status == .running)
        sim.send(.timerFired(armed.key), at: armed.dueAt)
        #expect(sim.lastOutcome == .applied)
        sim.advance(to: armed.dueAt + 1_000)
        #expect(sim.dispatched.count == 2)
    }

    @Test func aRetentionFiringIsCheckedTheSameWay() throws {
        var sim = Simulator(try workflow(Self.longStep))
        sim.complete("crunch", at: 2_000)
        let retention = try #require(sim.state.timers.first { $0.key.kind == .retention })
        #expect(sim.send(.timerFired(retention.key, dueAt: retention.dueAt - 5), at: retention.dueAt).effects.isEmpty)
        #expect(sim.send(.timerFired(retention.key, dueAt: retention.dueAt), at: retention.dueAt - 1).effects.isEmpty)
        #expect(sim.send(.timerFired(retention.key, dueAt: retention.dueAt), at: retention.dueAt).effects == [.purge])
    }
}

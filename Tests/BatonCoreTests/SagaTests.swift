import BatonCore
import Foundation
import Testing

@Suite("Saga state machine")
struct SagaTests {
    static let orderYAML = """
        workflow_id: order
        on_failure: { then: suspend }
        steps:
          - { id: validate, type: svc }
          - id: reserve
            type: svc
            depends_on: [validate]
            input: { order: $.input.order_id }
            compensation: { type: release, input: { reservation: $.steps.reserve.output.reservation_id } }
          - id: charge
            type: svc
            depends_on: [reserve]
            input: { reservation: $.steps.reserve.output.reservation_id }
            retry: { max_attempts: 3, initial_backoff: 1s, multiplier: 2, max_backoff: 1m, jitter: 0 }
            compensation: { type: refund }
          - { id: ship, type: svc, depends_on: [charge] }
          - { id: notify, type: notification, depends_on: [ship] }
        """

    @Test func startDispatchesEveryRootAtOnceAndMapsInputs() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-1"])
        #expect(sim.dispatched.map(\.step) == ["validate"])
        #expect(sim.command("validate")?.input == ["order_id": "o-1"])  // no template: the workflow input
        #expect(sim.command("validate")?.attempt == 1)
        #expect(sim.command("validate")?.idempotencyKey == "i-1/validate")
        sim.complete("validate", output: ["ok": true])
        #expect(sim.command("reserve")?.input == ["order": "o-1"])
        sim.complete("reserve", output: ["reservation_id": "r-9"])
        #expect(sim.command("charge")?.input == ["reservation": "r-9"])
        sim.complete("charge")
        sim.complete("ship", output: ["tracking": "T1"])
        sim.complete("notify", output: ["sent": true])
        #expect(sim.state.status == .completed)
        #expect(sim.state.output == ["notify": ["sent": true]])
        #expect(sim.effects.contains { $0.effect == .completed(output: ["notify": ["sent": true]]) })
        #expect(sim.state.timers.map(\.key.kind) == [.retention])
    }

    /// The seed's timing example: A (10 s), B (15 s), C (5 s) in parallel, then D. D starts at 15 s, not 30 s.
    @Test func parallelBranchesJoinWhenTheSlowestFinishes() throws {
        var sim = Simulator(try workflow("""
            workflow_id: fan
            steps:
              - { id: A, type: t }
              - { id: B, type: t }
              - { id: C, type: t }
              - { id: D, type: t, depends_on: [A, B, C] }
            """))
        #expect(Set(sim.dispatched.map(\.step)) == ["A", "B", "C"])
        // The default timeout (30 m) runs from each worker's start; with no queue_timeout they may start any time.
        #expect(sim.dispatched.allSatisfy { $0.timeout == .minutes(30) && $0.deadline == StepCommand.noDeadline })
        sim.complete("C", at: 5_000)
        sim.complete("A", at: 10_000)
        #expect(!sim.dispatched.contains { $0.step == "D" })
        sim.complete("B", at: 15_000)
        #expect(sim.dispatchTimes(of: "D") == [15_000])
        sim.complete("D", at: 16_000)
        #expect(sim.state.status == .completed)
    }

    /// The seed's error example: charge fails three times with growing delays; the completed steps are
    /// compensated in reverse order; an alert goes out; the instance is suspended; a manual retry completes it.
    @Test func finalFailureCompensatesInReverseAlertsSuspendsAndAManualRetryCompletes() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-1"])
        sim.complete("validate", at: 100)
        sim.complete("reserve", output: ["reservation_id": "r-9"], at: 200)
        sim.fail("charge", error: "card gateway down", at: 300)
        #expect(sim.state.status == .running)
        sim.advance(to: 10_000)  // the retry fires after 1 s
        #expect(sim.dispatchTimes(of: "charge") == [200, 1_300])
        sim.fail("charge", error: "card gateway down", at: 1_400)
        sim.advance(to: 10_000)  // then after 2 s
        #expect(sim.dispatchTimes(of: "charge") == [200, 1_300, 3_400])
        #expect(sim.dispatched.filter { $0.step == "charge" }.map(\.attempt) == [1, 2, 3])
        sim.fail("charge", error: "card gateway down", at: 3_500)

        #expect(sim.state.status == .compensating)
        // charge never completed, so only reserve is undone (validate has no compensation).
        #expect(sim.compensations.map(\.step) == ["reserve"])
        #expect(sim.compensations.first?.input == ["reservation": "r-9"])
        #expect(sim.compensations.first?.pool == "release")
        #expect(sim.compensations.first?.idempotencyKey == "i-1/reserve/compensation")
        sim.completeCompensation("reserve", at: 3_600)
        #expect(sim.state.status == .suspended)
        #expect(sim.state.suspension == .failure)
        #expect(sim.alerts.count == 1)
        #expect(sim.alerts.first?.message.contains("'charge' failed after 3 attempts: card gateway down") == true)
        #expect(sim.alerts.first?.message.contains("compensated: reserve") == true)
        #expect(sim.effects.last?.effect == .suspended(reason: "'charge' failed after 3 attempts: card gateway down"))

        // The operator fixed the gateway: retry. Undone steps run again, with new attempt numbers.
        sim.send(.retry(step: nil, by: "ops", request: "r-\(UUID().uuidString)"), at: 60_000)
        #expect(sim.state.status == .running)
        #expect(sim.command("reserve")?.attempt == 2)
        #expect(sim.status("validate") == .completed)
        sim.complete("reserve", output: ["reservation_id": "r-10"])
        #expect(sim.command("charge")?.attempt == 4)
        sim.complete("charge")
        sim.complete("ship")
        sim.complete("notify")
        #expect(sim.state.status == .completed)
    }

    @Test func compensationsRunInReverseCompletionOrderAndParallelBranchesTogether() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            steps:
              - { id: a, type: t, compensation: { type: undo } }
              - { id: b, type: t, depends_on: [a], compensation: { type: undo } }
              - { id: c, type: t, depends_on: [a], compensation: { type: undo } }
              - { id: d, type: t, depends_on: [b, c], retry: { max_attempts: 1 } }
            """))
        sim.complete("a", at: 1)
        sim.complete("c", at: 2)
        sim.complete("b", at: 3)
        sim.fail("d", at: 4)
        // b and c completed in parallel: both are undone at once, latest first; a waits for both.
        #expect(sim.compensations.map(\.step) == ["b", "c"])
        sim.completeCompensation("b", at: 5)
        #expect(sim.compensations.map(\.step) == ["b", "c"])
        sim.completeCompensation("c", at: 6)
        #expect(sim.compensations.map(\.step) == ["b", "c", "a"])
        sim.completeCompensation("a", at: 7)
        #expect(sim.state.status == .failed)
        #expect(sim.effects.last?.effect == .failed(reason: "'d' failed after 1 attempt: boom"))
        // Without explicit input, a compensation gets what the step was given and what it returned.
        #expect(sim.compensations.first?.input == ["output": [:], "input": [:]])
    }

    @Test func aRunningStepFinishesBeforeCompensationStartsAndIsCompensatedToo() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            steps:
              - { id: a, type: t, compensation: { type: undo } }
              - { id: slow, type: t, compensation: { type: undo } }
              - { id: bad, type: t, depends_on: [a], retry: { max_attempts: 1 } }
            """))
        sim.complete("a", at: 1)
        sim.fail("bad", retryable: false, at: 2)
        #expect(sim.state.status == .compensating)
        #expect(sim.compensations.isEmpty, "slow is still running: its outcome decides what to undo")
        sim.complete("slow", at: 3)
        #expect(sim.compensations.map(\.step) == ["slow", "a"])
    }

    @Test func aNonRetryableFailureSkipsTheRemainingAttempts() throws {
        var sim = Simulator(try workflow("workflow_id: w\nsteps: [{ id: a, type: t }]"))
        sim.fail("a", error: "card declined", retryable: false)
        #expect(sim.state.status == .failed)
        #expect(sim.dispatched.count == 1)
        #expect(sim.state.reason == "'a' failed: card declined")
    }

    @Test func aStepTimeoutIsAFailedAttempt() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            steps: [{ id: a, type: t, timeout: 10s, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }]
            """))
        sim.start("a", at: 0)
        sim.advance(to: 10_000)
        #expect(sim.state.steps[0].units[0].error == "timed out after 10s")
        sim.advance(to: 11_000)
        #expect(sim.dispatchTimes(of: "a") == [0, 11_000])
        // A late answer from the timed-out attempt is stale; the current attempt's answer counts.
        let stale = sim.send(.stepCompleted(step: "a", item: nil, attempt: 1, output: ["late": true]))
        #expect(stale.outcome == .ignored(.stale("attempt 1 of 'a' was superseded by attempt 2")))
        sim.start("a", at: 11_000)
        sim.advance(to: 21_000)
        #expect(sim.state.status == .failed)
        #expect(sim.state.reason == "'a' failed after 2 attempts: timed out after 10s")
    }

    @Test func retryDelaysGrowExponentiallyUpToTheCapWithBoundedJitter() {
        let p = RetryPolicy(maxAttempts: 10, initialBackoff: .seconds(1), multiplier: 2, maxBackoff: .seconds(30), jitter: 0.2)
        for seed in 0..<200 as Range<UInt64> {
            let d = (1...9).map { p.backoff(afterAttempt: $0, seed: seed &* 7919).value }
            for (i, v) in d.enumerated() {
                let nominal = min(1000.0 * Double(1 << i), 30_000)
                #expect(Double(v) >= nominal * 0.8 - 1 && Double(v) <= nominal * 1.2 + 1)
            }
        }
        #expect(p.backoff(afterAttempt: 3, seed: 42) == p.backoff(afterAttempt: 3, seed: 42), "deterministic: replays give the same delays")
    }

    static let loanYAML = """
        workflow_id: loan
        steps:
          - { id: score, type: bureau, compensation: { type: unscore } }
          - id: approve
            type: human_task
            depends_on: [score]
            assignee: role:credit_manager
            timeout: 48h
            on_timeout: { action: escalate, escalate_to: role:head_of_credit, then: reject }
            input: { score: $.steps.score.output.score }
          - { id: disburse, type: payments, depends_on: [approve] }
        """

    @Test func aHumanTaskSuspendsTheInstanceUntilApproved() throws {
        var sim = Simulator(try workflow(Self.loanYAML))
        sim.complete("score", output: ["score": 720], at: 1_000)
        let task = try #require(sim.tasks.first)
        #expect(task.assignee == "role:credit_manager")
        #expect(task.input == ["score": 720])
        #expect(task.taskID == "i-1/approve/1")
        #expect(task.dueAt == 1_000 + 48 * 3_600_000)
        #expect(sim.effects.contains { $0.effect == .notify(NotificationMessage(recipient: "role:credit_manager", subject: "New task: loan: approve", instanceID: "i-1", taskID: "i-1/approve/1")) })
        #expect(sim.state.status == .waiting)
        // A worker cannot complete a human step, and a decision for another attempt does not count.
        #expect(sim.send(.stepCompleted(step: "approve", item: nil, attempt: 1, output: [:])).outcome == .ignored(.notApplicable("'approve' is a human task: it completes by a decision")))
        #expect(sim.send(.taskDecided(step: "approve", attempt: 2, approved: true, by: "eve", comment: nil)).outcome != .applied)
        sim.send(.taskDecided(step: "approve", attempt: 1, approved: true, by: "alice", comment: "fine"), at: 5_000)
        #expect(sim.closed("i-1/approve/1")?.resolution == .approved)
        #expect(sim.closed("i-1/approve/1")?.task.history.map(\.action) == [.created, .notified, .approved])
        #expect(sim.closed("i-1/approve/1")?.task.history.last?.by == "alice")
        #expect(sim.state.status == .running)
        #expect(sim.command("disburse") != nil)
        #expect(sim.state.steps[1].output == ["approved": true, "by": "alice", "comment": "fine"])
        #expect(sim.send(.taskDecided(step: "approve", attempt: 1, approved: false, by: "bob", comment: nil)).outcome == .ignored(.duplicate("the task for attempt 1 of 'approve' is already closed")))
    }

    @Test func aClaimedTaskIsDecidedByItsClaimantOnlyAndItsHistorySaysWhoDidWhat() throws {
        var sim = Simulator(try workflow(Self.loanYAML))
        sim.complete("score", output: ["score": 500], at: 1_000)
        let claim = SagaEvent.taskClaimed(step: "approve", attempt: 1, claimant: "bob", by: "bob", request: "r1")
        #expect(sim.send(claim, at: 2_000).outcome == .applied)
        #expect(sim.state.steps[1].units[0].task?.claimedBy == "bob")
        // Claimed: nobody else claims it or decides it, unless overriding (an admin).
        #expect(sim.send(.taskClaimed(step: "approve", attempt: 1, claimant: "carol", by: "carol", request: "r2")).outcome == .ignored(.notApplicable("the task is claimed by bob")))
        #expect(sim.send(.taskDecided(step: "approve", attempt: 1, approved: true, by: "alice", comment: nil, request: "r3")).outcome == .ignored(.notApplicable("the task is claimed by bob: only they can decide it")))
        #expect(sim.send(claim).outcome == .ignored(.duplicate("the task is claimed by bob already")))
        #expect(sim.send(.taskClaimed(step: "approve", attempt: 1, claimant: nil, by: "carol", request: "r4")).outcome != .applied)
        sim.send(.taskClaimed(step: "approve", attempt: 1, claimant: nil, by: "bob", request: "r5"), at: 3_000)
        #expect(sim.state.steps[1].units[0].task?.claimedBy == nil)
        sim.send(.taskClaimed(step: "approve", attempt: 1, claimant: "carol", by: "root", request: "r6", override: true), at: 4_000)
        sim.send(.taskDecided(step: "approve", attempt: 1, approved: true, by: "carol", comment: "ok", data: ["limit": 5000], request: "r7"), at: 5_000)
        let closed = try #require(sim.closed("i-1/approve/1"))
        #expect(closed.resolution == .approved)
        #expect(closed.task.history.map(\.action) == [.created, .notified, .claimed, .unclaimed, .claimed, .approved])
        #expect(closed.task.history.map(\.at) == [1_000, 1_000, 2_000, 3_000, 4_000, 5_000])
        #expect(closed.task.history[4].by == "root" && closed.task.history[4].to == "carol")
        #expect(closed.task.history[5].request == "r7" && closed.task.history[5].comment == "ok")
        #expect(sim.state.steps[1].output == ["approved": true, "by": "carol", "comment": "ok", "data": ["limit": 5000]])
        #expect(sim.state.steps[1].units[0].task == nil)
        // Every open-task change was written for the inbox.
        #expect(sim.effects.filter { if case .updateTask = $0.effect { true } else { false } }.count == 3)
    }

    @Test func aRejectedTaskTakesTheFailurePath() throws {
        var sim = Simulator(try workflow(Self.loanYAML))
        sim.complete("score", output: ["score": 500])
        sim.send(.taskDecided(step: "approve", attempt: 1, approved: false, by: "alice", comment: "too risky"))
        #expect(sim.state.reason == "'approve' was rejected by alice: too risky")
        #expect(sim.compensations.map(\.step) == ["score"])
        sim.completeCompensation("score")
        #expect(sim.state.status == .failed)
    }

    @Test func anUnansweredTaskEscalatesThenRejects() throws {
        var sim = Simulator(try workflow(Self.loanYAML))
        sim.complete("score", output: ["score": 500])
        sim.advance(to: 48 * 3_600_000)
        #expect(sim.closed("i-1/approve/1")?.resolution == .escalated)
        #expect(sim.closed("i-1/approve/1")?.task.history.last?.to == "role:head_of_credit")
        #expect(sim.tasks.map(\.assignee) == ["role:credit_manager", "role:head_of_credit"])
        #expect(sim.tasks.last?.taskID == "i-1/approve/2")
        #expect(sim.state.status == .waiting)
        sim.advance(to: 96 * 3_600_000)
        #expect(sim.closed("i-1/approve/2")?.resolution == .timedOut)
        #expect(sim.state.reason == "'approve' was rejected: nobody decided within 2d")
        #expect(sim.state.status == .compensating)
    }

    @Test func conditionsSkipStepsAndSkippedStepsCountAsDone() throws {
        let w = try workflow("""
            workflow_id: w
            steps:
              - { id: check, type: t }
              - { id: big, type: t, depends_on: [check], when: "$.input.amount >= 1000" }
              - { id: review, type: t, depends_on: [big], when: "$.steps.check.output.flagged == true" }
              - { id: done, type: t, depends_on: [review] }
            """)
        var small = Simulator(w, input: ["amount": 10])
        small.complete("check", output: ["flagged": false])
        #expect(small.status("big") == .skipped)
        #expect(small.status("review") == .skipped)
        #expect(small.command("done") != nil)
        var large = Simulator(w, input: ["amount": 5000])
        large.complete("check", output: ["flagged": true])
        #expect(large.command("big") != nil)
        large.complete("big")
        #expect(large.command("review") != nil)
    }

    static let fanOutYAML = """
        workflow_id: fan
        steps:
          - id: grant
            type: it
            for_each: { items: $.input.systems, max_concurrency: 2 }
            input: { system: $.item, n: $.index }
            retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 }
            compensation: { type: revoke, input: { system: $.item } }
          - { id: after, type: t, depends_on: [grant], input: { all: $.steps.grant.output } }
        """

    @Test func forEachRunsItemsInParallelUpToTheCapAndCollectsOutputsInOrder() throws {
        var sim = Simulator(try workflow(Self.fanOutYAML), input: ["systems": ["git", "jira", "wiki"]])
        #expect(sim.dispatched.map(\.item) == [0, 1])
        #expect(sim.command("grant", item: 1)?.input == ["system": "jira", "n": 1])
        #expect(sim.command("grant", item: 1)?.idempotencyKey == "i-1/grant/1")
        sim.complete("grant", item: 1, output: "J")
        #expect(sim.dispatched.map(\.item) == [0, 1, 2])
        sim.fail("grant", item: 0)  // items retry on their own
        sim.advance(to: 1_000)
        #expect(sim.command("grant", item: 0)?.attempt == 2)
        sim.complete("grant", item: 2, output: "W")
        sim.complete("grant", item: 0, output: "G")
        #expect(sim.command("after")?.input == ["all": ["G", "J", "W"]])
    }

    @Test func anEmptyForEachCompletesAtOnceAndANonArrayFails() throws {
        var empty = Simulator(try workflow(Self.fanOutYAML), input: ["systems": []])
        #expect(empty.command("after")?.input == ["all": []])
        empty.complete("after")
        #expect(empty.state.status == .completed)
        let bad = Simulator(try workflow(Self.fanOutYAML), input: ["systems": "git"])
        #expect(bad.state.status == .failed)
        #expect(bad.state.reason == "'grant' cannot start: for_each items $.input.systems is a string, not an array")
    }

    @Test func eachItemIsCompensatedOnItsOwn() throws {
        var sim = Simulator(try workflow(Self.fanOutYAML.replacingOccurrences(of: "input: { all: $.steps.grant.output } }", with: "input: { all: $.steps.grant.output }, retry: { max_attempts: 1 } }")), input: ["systems": ["git", "jira", "wiki"]])
        sim.complete("grant", item: 0, output: "G")
        sim.complete("grant", item: 1, output: "J")
        sim.complete("grant", item: 2, output: "W")
        sim.fail("after")
        #expect(sim.compensations.map(\.item) == [2, 1, 0])
        #expect(sim.compensations.map(\.input) == [["system": "wiki"], ["system": "jira"], ["system": "git"]])
    }

    @Test func aCompensationThatKeepsFailingSuspendsWithAnAlertAndCanBeRetried() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            steps:
              - { id: a, type: t, compensation: { type: undo, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } } }
              - { id: b, type: t, depends_on: [a], retry: { max_attempts: 1 } }
            """))
        sim.complete("a", at: 1)
        sim.fail("b", at: 2)
        let first = try #require(sim.compensations.last)
        sim.send(.compensationFailed(step: "a", item: nil, attempt: first.attempt, error: "db down"), at: 3)
        #expect(sim.state.status == .compensating)
        sim.advance(to: 1_003)
        #expect(sim.compensations.map(\.attempt) == [1, 2])
        sim.send(.compensationFailed(step: "a", item: nil, attempt: 2, error: "db down"), at: 1_004)
        #expect(sim.state.status == .suspended)
        #expect(sim.state.suspension == .compensationFailed)
        #expect(sim.alerts.last?.severity == .critical)
        #expect(sim.alerts.last?.message == "the compensation of 'a' failed after 2 attempts: db down; the instance is suspended for manual intervention")
        sim.send(.retry(step: "a", by: "ops", request: "r-\(UUID().uuidString)"), at: 5_000)
        #expect(sim.compensations.map(\.attempt) == [1, 2, 3])
        sim.completeCompensation("a")
        #expect(sim.state.status == .failed)
    }

    @Test func skippingAFailedStepGoesOnWithTheGivenOutput() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            on_failure: { compensate: false, then: suspend }
            steps:
              - { id: a, type: t, retry: { max_attempts: 1 } }
              - { id: b, type: t, depends_on: [a], input: { x: $.steps.a.output.x } }
            """))
        sim.fail("a")
        #expect(sim.state.status == .suspended)
        sim.send(.skip(step: "a", output: ["x": 42], by: "ops", request: "r-1"))
        #expect(sim.status("a") == .skipped)
        #expect(sim.command("b")?.input == ["x": 42])
    }

    @Test func cancelCompensatesAndEndsCancelled() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o"])
        sim.complete("validate")
        sim.complete("reserve", output: ["reservation_id": "r"])
        sim.send(.cancel(reason: "customer asked", by: "support", request: "c-1"))
        #expect(sim.state.status == .compensating)
        sim.complete("charge")  // in flight when cancelled: it finished, so it is undone too
        #expect(sim.compensations.map(\.step) == ["charge"])
        sim.completeCompensation("charge")
        #expect(sim.compensations.map(\.step) == ["charge", "reserve"])
        sim.completeCompensation("reserve")
        #expect(sim.state.status == .cancelled)
        #expect(sim.effects.last?.effect == .cancelled(reason: "cancelled by support: customer asked"))
        #expect(sim.send(.cancel(reason: "again", by: "x", request: "c-2")).outcome == .ignored(.notApplicable("the instance is cancelled")))
    }

    @Test func aSuspendedInstanceThatIsCancelledSaysWhyItEnded() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            on_failure: { compensate: false, then: suspend }
            steps:
              - { id: a, type: t, retry: { max_attempts: 1 } }
            """))
        sim.fail("a", error: "declined")
        #expect(sim.state.status == .suspended)
        #expect(sim.state.reason == "'a' failed after 1 attempt: declined")
        sim.send(.cancel(reason: "customer left", by: "ops", request: "c-1"))
        #expect(sim.state.status == .cancelled)
        #expect(sim.state.reason == "cancelled by ops: customer left")
    }

    @Test func anOperatorRequestDeliveredTwiceIsAppliedOnce() throws {
        var sim = Simulator(try workflow("workflow_id: w\non_failure: { then: suspend }\nsteps: [{ id: a, type: t, retry: { max_attempts: 1 } }]"))
        sim.fail("a")
        sim.send(.resume(by: "ops", request: "req-1"))
        #expect(sim.state.status == .running)
        sim.fail("a")
        #expect(sim.state.status == .suspended)
        // The same request again (a client retried its send) must not resume the instance a second time.
        #expect(sim.send(.resume(by: "ops", request: "req-1")).outcome == .ignored(.duplicate("operator request req-1 was applied already")))
        #expect(sim.state.status == .suspended)
        sim.send(.resume(by: "ops", request: "req-2"))
        #expect(sim.state.status == .running)
    }

    @Test func theWorkflowTimeoutFailsWhatIsRunningAndCompensates() throws {
        var sim = Simulator(try workflow("""
            workflow_id: w
            timeout: 1m
            steps:
              - { id: a, type: t, compensation: { type: undo } }
              - { id: b, type: t, depends_on: [a] }
            """))
        sim.complete("a", at: 1_000)
        sim.advance(to: 60_000)
        #expect(sim.state.reason == "the workflow timed out after 1m")
        #expect(sim.compensations.map(\.step) == ["a"])
        #expect(sim.send(.stepCompleted(step: "b", item: nil, attempt: 1, output: [:])).outcome == .ignored(.duplicate("attempt 1 of 'b' is already failed")))
    }

    @Test func duplicateStaleUnknownAndOutOfOrderEventsChangeNothingAndSaySo() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o"])
        let before = sim.state
        let cases: [(SagaEvent, Outcome)] = [
            (.stepCompleted(step: "nope", item: nil, attempt: 1, output: [:]), .ignored(.unknown("no step 'nope' in order v1"))),
            (.stepCompleted(step: "charge", item: nil, attempt: 1, output: [:]), .ignored(.unknown("step 'charge' has not started"))),
            (.stepCompleted(step: "validate", item: nil, attempt: 2, output: [:]), .ignored(.unknown("attempt 2 of 'validate' was never dispatched (current: 1)"))),
            (.stepCompleted(step: "validate", item: 3, attempt: 1, output: [:]), .ignored(.unknown("step 'validate' has no items"))),
            (.timerFired(TimerKey(kind: .retry, step: 0, attempt: 1)), .ignored(.stale("timer retry/0/-/1 is not armed (it fired already or was cancelled)"))),
            (.resume(by: "ops", request: "r-\(UUID().uuidString)"), .ignored(.notApplicable("only a suspended instance can be resumed or retried; it is running"))),
            (.compensationCompleted(step: "validate", item: nil, attempt: 1), .ignored(.unknown("attempt 1 of 'validate' was never dispatched (current: 0)"))),
        ]
        for (event, outcome) in cases {
            let t = sim.send(event)
            #expect(t.outcome == outcome)
            #expect(t.effects.isEmpty)
            #expect(sim.state == before)
        }
        sim.complete("validate")
        let after = sim.state
        let again = sim.send(.stepCompleted(step: "validate", item: nil, attempt: 1, output: [:]))
        #expect(again.outcome == .ignored(.duplicate("attempt 1 of 'validate' is already completed")))
        #expect(sim.state == after)
    }
}

@Suite("Instance state encoding")
struct StateEncodingTests {
    @Test func stateRoundTripsAndItsSizeDependsOnStepsNotEvents() throws {
        let w = try workflow(SagaTests.orderYAML)
        var sim = Simulator(w, input: ["order_id": "o-1"])
        sim.complete("validate")
        sim.complete("reserve", output: ["reservation_id": "r-1"])
        let encoded = StateCodec.encode(sim.state)
        #expect(encoded.first == 0xBA && encoded.dropFirst().first == 1)
        #expect(try StateCodec.decode(encoded) == sim.state)

        // A thousand ignored and stale events later, the state is the same size.
        let size = encoded.count
        for i in 0..<1000 { sim.send(.stepCompleted(step: "validate", item: nil, attempt: 1, output: ["i": .number(Double(i))])) }
        #expect(StateCodec.encode(sim.state).count == size)
        // Retries add no history either: the charge step fails and retries many times.
        var long = Simulator(try workflow("workflow_id: w\nsteps: [{ id: a, type: t, retry: { max_attempts: 100, initial_backoff: 1ms, max_backoff: 1ms } }]"))
        long.fail("a")
        long.advance(to: 10)
        let early = StateCodec.encode(long.state).count
        for t in 0..<90 {
            long.fail("a", at: Timestamp(100 + t * 10))
            long.advance(to: Timestamp(105 + t * 10))
        }
        #expect(long.command("a")?.attempt == 92)
        #expect(StateCodec.encode(long.state).count <= early + 16)
        #expect(try StateCodec.decode(StateCodec.encode(long.state)) == long.state)

        // Compact: the five-step order with small outputs fits in well under a kilobyte.
        #expect(size < 700, "\(size) bytes: \(String(decoding: encoded.dropFirst(2), as: UTF8.self))")
    }

    @Test func sizeGrowsLinearlyWithSteps() throws {
        func size(_ n: Int) throws -> Int {
            let steps = (0..<n).map { "{ id: s\($0), type: t }" }.joined(separator: ", ")
            var sim = Simulator(try workflow("workflow_id: w\nsteps: [\(steps)]"))
            for i in 0..<n { sim.complete("s\(i)", output: ["ok": true]) }
            return StateCodec.encode(sim.state).count
        }
        let (s10, s100) = (try size(10), try size(100))
        #expect(s100 < s10 * 12)
    }

    @Test func foreignBytesAreRefusedClearly() {
        #expect(throws: StateCodec.DecodeError.self) { try StateCodec.decode(Data("{}".utf8)) }
        do { _ = try StateCodec.decode(Data([0xBA, 9, 0x7B])) } catch {
            #expect(error.description == "cannot decode instance state: format version 9 is not supported (this build reads 1)")
        }
    }
}

@Suite("Reading only the status of a snapshot")
struct StateStatusPeekTests {
    @Test func theStatusReadFromTheBytesIsTheDecodedOne() throws {
        var sim = Simulator(try workflow(SagaTests.orderYAML), input: ["order_id": "o", "status": "a \"status\":\"completed\" lure"])
        #expect(StateCodec.status(StateCodec.encode(sim.state)) == .running)
        // Step outputs sort after the top-level status: a worker's {"status": ...} must not be mistaken for it.
        sim.complete("validate", output: ["status": "completed", "nested": ["status": "failed"]])
        #expect(StateCodec.status(StateCodec.encode(sim.state)) == .running)
        sim.fail("reserve", retryable: false)
        #expect(StateCodec.status(StateCodec.encode(sim.state)) == sim.state.status)
        #expect(sim.state.status != .running)
        #expect(StateCodec.status(Data("nope".utf8)) == nil)
    }

    @Test func theWorkflowAndStatusReadFromTheBytesAreTheDecodedOnes() throws {
        var sim = Simulator(try workflow(SagaTests.orderYAML), input: ["workflowID": "lure", "order_id": "o"])
        let running = try #require(StateCodec.workflowAndStatus(StateCodec.encode(sim.state)))
        #expect(running.workflowID == sim.state.workflowID && running.status == .running)
        sim.fail("validate", retryable: false)
        let ended = try #require(StateCodec.workflowAndStatus(StateCodec.encode(sim.state)))
        #expect(ended.workflowID == sim.state.workflowID && ended.status == sim.state.status)
        // An escaped character in a value is resolved as the decoder would.
        sim.state.workflowID = "w\"x"
        #expect(StateCodec.workflowAndStatus(StateCodec.encode(sim.state))?.workflowID == "w\"x")
        #expect(StateCodec.workflowAndStatus(Data("nope".utf8)) == nil)
    }
}

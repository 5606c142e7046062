import BatonClient
import BatonCore
import BatonOperatorTools
import Foundation
import Testing

/// `baton watch ID`: what changed between an instance's snapshots, driven through the saga state machine.
@Suite("TailWatch: an instance's changes in words (baton watch ID)")
struct TailWatchInstanceChangesTests {
    /// Applies events to the pure state machine and collects the changes each snapshot shows.
    struct Run {
        let workflow: Workflow
        var state: InstanceState
        var lines: [String]

        init(_ yaml: String, id: String = "o-1", input: JSON = [:]) throws {
            workflow = try DefinitionLoader.load(Data(yaml.utf8))
            state = Saga.start(workflow, instanceID: id, input: input, now: 0).state
            lines = InstanceChanges.between(nil, state, workflow: workflow, at: 0).map(\.description)
        }

        /// The changes the event makes at `now`.
        @discardableResult
        mutating func send(_ event: SagaEvent, at now: Int64) -> [String] {
            let next = Saga.apply(workflow, to: state, event: event, now: now).state
            let changes = InstanceChanges.between(state, next, workflow: workflow, at: now).map(\.description)
            state = next
            lines += changes
            return changes
        }

        mutating func fireTimers(upTo now: Int64) {
            while let due = state.timers.filter({ $0.dueAt <= now && $0.key.kind != .retention }).min(by: { $0.dueAt < $1.dueAt }) {
                send(.timerFired(due.key), at: due.dueAt)
            }
        }
    }

    static let saga = """
        workflow_id: order
        on_failure: { compensate: true, alert: true, then: suspend }
        steps:
          - { id: validate, type: svc }
          - { id: reserve, type: svc, depends_on: [validate], compensation: { type: undo } }
          - { id: charge, type: svc, depends_on: [reserve], retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }
        """

    @Test func stepsAreListedInOrderWithTheirTimesRetriesAndCompensations() throws {
        var run = try Run(Self.saga)
        #expect(run.lines == ["o-1: order v1, running", "validate  started (attempt 1)"])
        #expect(
            run.send(.stepCompleted(step: "validate", item: nil, attempt: 1, output: [:]), at: 120)
                == ["validate  completed in 120ms (attempt 1)", "reserve  started (attempt 1)"])
        run.send(.stepCompleted(step: "reserve", item: nil, attempt: 1, output: [:]), at: 250)
        #expect(
            run.send(.stepFailed(step: "charge", item: nil, attempt: 1, error: "declined", retryable: true), at: 300)
                == ["charge  attempt 1 failed: declined; retrying in 1.0s"])
        run.fireTimers(upTo: 1300)
        #expect(run.lines.last == "charge  started (attempt 2)")
        #expect(
            run.send(.stepFailed(step: "charge", item: nil, attempt: 2, error: "declined", retryable: true), at: 1350) == [
                "charge  failed in 1.1s: 'charge' failed after 2 attempts: declined",
                "instance compensating: 'charge' failed after 2 attempts: declined",
                "reserve  compensating (attempt 1)",
            ])
        let last = run.send(.compensationCompleted(step: "reserve", item: nil, attempt: 1), at: 1450)
        #expect(last.first == "reserve  compensated")
        #expect(last.last?.hasPrefix("instance suspended: 'charge' failed after 2 attempts: declined") == true, "\(last)")
        #expect(InstanceChanges.outcome(run.state, at: 1450).hasPrefix("o-1: suspended after 1.5s ('charge' failed after 2 attempts: declined"))
    }

    @Test func anInstanceThatCompletesEndsWithItsStatusLast() throws {
        var run = try Run("workflow_id: w\nsteps: [{ id: a, type: svc }, { id: b, type: svc, depends_on: [a] }]")
        run.send(.stepCompleted(step: "a", item: nil, attempt: 1, output: [:]), at: 10)
        #expect(run.send(.stepCompleted(step: "b", item: nil, attempt: 1, output: [:]), at: 2_500) == ["b  completed in 2.5s (attempt 1)", "instance completed"])
        #expect(InstanceChanges.outcome(run.state, at: 9_999) == "o-1: completed after 2.5s")
        // Nothing changed: nothing to say.
        #expect(InstanceChanges.between(run.state, run.state, workflow: run.workflow, at: 3_000).isEmpty)
    }

    @Test func aTimedOutAttemptSentAgainInOneSnapshotShowsBoth() throws {
        var run = try Run("workflow_id: w\nsteps: [{ id: a, type: svc, timeout: 1s, retry: { max_attempts: 3, initial_backoff: 1ms, jitter: 0 } }]")
        run.send(.heartbeat(step: "a", item: nil, attempt: 1, details: nil), at: 0)  // the worker's start report: the run timeout counts from it
        run.fireTimers(upTo: 5_000)
        #expect(run.lines.contains("a  started (attempt 2)"), "\(run.lines)")
        #expect(run.lines.filter { $0.hasPrefix("a  attempt 1 failed") }.count == 1, "\(run.lines)")
    }

    @Test func forEachItemsAndHumanTasksAreNamed() throws {
        var run = try Run(
            """
            workflow_id: w
            steps:
              - { id: ship, type: svc, for_each: { items: $.input.parcels } }
              - { id: approve, type: human_task, depends_on: [ship], assignee: "role:boss", title: Approve }
            """, input: ["parcels": [1, 2]])
        #expect(run.lines.contains("ship[0]  started (attempt 1)") && run.lines.contains("ship[1]  started (attempt 1)"), "\(run.lines)")
        run.send(.stepCompleted(step: "ship", item: 0, attempt: 1, output: [:]), at: 10)
        #expect(run.lines.last == "ship[0]  completed (attempt 1)")
        let shipped = run.send(.stepCompleted(step: "ship", item: 1, attempt: 1, output: [:]), at: 20)
        #expect(shipped.prefix(2) == ["ship[1]  completed (attempt 1)", "ship  completed in 20ms (2 items)"], "\(shipped)")
        #expect(shipped.contains("approve  waiting for a person (attempt 1)"), "\(shipped)")
        #expect(shipped.contains("approve  task o-1/approve/1 created for role:boss"), "\(shipped)")
        #expect(run.send(.taskClaimed(step: "approve", attempt: 1, claimant: "carol", by: "carol", request: nil), at: 30) == ["approve  task o-1/approve/1 claimed by carol"])
        let decided = run.send(.taskDecided(step: "approve", attempt: 1, approved: true, by: "carol", comment: nil), at: 40)
        #expect(decided == ["approve  task o-1/approve/1 closed", "approve  completed in 20ms (attempt 1)", "instance completed"], "\(decided)")
    }

    @Test func durationsReadAsPeopleSayThem() {
        #expect(InstanceChanges.duration(-5) == "0ms")
        #expect(InstanceChanges.duration(999) == "999ms")
        #expect(InstanceChanges.duration(1_049) == "1.0s")
        #expect(InstanceChanges.duration(59_960) == "60.0s")
        #expect(InstanceChanges.duration(192_000) == "3m12s")
    }
}

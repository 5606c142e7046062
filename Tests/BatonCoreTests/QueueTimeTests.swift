import BatonCore
import Foundation
import Testing

/// A step's timeout measures its run, from the worker's start report; waiting for a busy worker counts only
/// against the step's `queue_timeout`, when it has one (issue 20, "busy is not broken").
@Suite("Saga: run timeouts count from the start, queue timeouts from the dispatch")
struct QueueTimeTests {
    static let plain = """
        workflow_id: busy
        steps:
          - { id: validate, type: svc, timeout: 30s, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }
        """
    static let queued = """
        workflow_id: busy
        steps:
          - { id: validate, type: svc, timeout: 30s, queue_timeout: 2m, retry: { max_attempts: 2, initial_backoff: 1s, jitter: 0 } }
        """

    @Test func aCommandWaitingLongerThanItsTimeoutDoesNotTimeOutOnceStarted() throws {
        var sim = Simulator(try workflow(Self.plain))
        #expect(!sim.state.timers.contains { $0.key.kind == .stepTimeout })
        // Ten minutes in the queue: nothing fires, the attempt is still the first.
        sim.advance(to: 600_000)
        #expect(sim.state.steps[0].units[0].status == .running)
        #expect(sim.dispatched.count == 1)
        sim.start("validate", at: 600_000)
        sim.advance(to: 629_999)
        sim.complete("validate", at: 629_999)
        #expect(sim.state.status == .completed)
        #expect(sim.dispatched.count == 1)
    }

    @Test func theRunTimeoutCountsFromTheStart() throws {
        var sim = Simulator(try workflow(Self.plain))
        sim.start("validate", at: 45_000)
        #expect(sim.state.timers.contains(ArmedTimer(key: TimerKey(kind: .stepTimeout, step: 0, attempt: 1), dueAt: 75_000)))
        // A later heartbeat does not move the run timeout: it measures the run, not the silence.
        sim.send(.heartbeat(step: "validate", item: nil, attempt: 1, details: ["done": 1]), at: 60_000)
        #expect(sim.state.timers.first { $0.key.kind == .stepTimeout }?.dueAt == 75_000)
        sim.advance(to: 74_999)
        #expect(sim.state.steps[0].units[0].status == .running)
        sim.advance(to: 75_000)
        #expect(sim.state.steps[0].units[0].status == .backoff)
        #expect(sim.state.steps[0].units[0].error == "timed out after 30s")
        // The retry is a new attempt: its run timeout waits for its own start.
        sim.advance(to: 76_000)
        #expect(sim.command("validate")?.attempt == 2)
        #expect(!sim.state.timers.contains { $0.key.kind == .stepTimeout })
    }

    /// A start report that waited behind other events (a busy partition, a takeover) is applied late; the run
    /// timeout still counts from when the worker sent it, so a hung step is not given the queue's time on top.
    /// The report's time is taken no later than when it is applied and no earlier than the step started (a
    /// worker's clock behind the coordinator's).
    @Test func theRunTimeoutCountsFromWhenTheStartReportWasWritten() throws {
        let start = SagaEvent.heartbeat(step: "validate", item: nil, attempt: 1, details: nil)
        func due(_ sim: Simulator) -> Timestamp? { sim.state.timers.first { $0.key.kind == .stepTimeout }?.dueAt }

        var late = Simulator(try workflow(Self.plain), at: 1_000)
        late.send(start, at: 12_000, writtenAt: 5_000)  // written at 5 s, applied 7 s later
        #expect(due(late) == 35_000)
        late.advance(to: 35_000)
        #expect(late.state.steps[0].units[0].error == "timed out after 30s")

        var behind = Simulator(try workflow(Self.plain), at: 1_000)
        behind.send(start, at: 12_000, writtenAt: -600_000)  // a worker's clock ten minutes behind
        #expect(due(behind) == 31_000)

        var ahead = Simulator(try workflow(Self.plain), at: 1_000)
        ahead.send(start, at: 12_000, writtenAt: 900_000)  // a worker's clock ahead
        #expect(due(ahead) == 42_000)

        // Later heartbeats written long before they are applied move the heartbeat timeout from when they are
        // applied: a queue must not make a live attempt look dead.
        var beating = Simulator(try workflow("""
            workflow_id: busy
            steps: [{ id: validate, type: svc, timeout: 30s, heartbeat_timeout: 6s }]
            """), at: 1_000)
        beating.send(start, at: 12_000, writtenAt: 2_000)
        #expect(beating.state.timers.first { $0.key.kind == .heartbeat }?.dueAt == 18_000)
        #expect(due(beating) == 32_000)
    }

    @Test func theQueueTimeoutFiresWhenNoWorkerStartedTheAttempt() throws {
        var sim = Simulator(try workflow(Self.queued))
        #expect(sim.state.timers.contains(ArmedTimer(key: TimerKey(kind: .stepTimeout, step: 0, attempt: 1), dueAt: 120_000)))
        // The worker is told until when it may start the attempt; the run's own length comes with it.
        #expect(sim.command("validate")?.deadline == 120_000)
        #expect(sim.command("validate")?.timeout == .seconds(30))
        sim.advance(to: 120_000)
        #expect(sim.state.steps[0].units[0].status == .backoff)
        #expect(sim.state.steps[0].units[0].error == "not started within its queue_timeout of 2m: no worker took the command")
        sim.advance(to: 121_000)
        #expect(sim.command("validate")?.attempt == 2)
        #expect(sim.command("validate")?.deadline == 241_000)
    }

    @Test func aStartBeforeTheQueueTimeoutReplacesItWithTheRunTimeout() throws {
        var sim = Simulator(try workflow(Self.queued))
        sim.start("validate", at: 110_000)
        #expect(sim.state.timers.filter { $0.key.kind == .stepTimeout } == [ArmedTimer(key: TimerKey(kind: .stepTimeout, step: 0, attempt: 1), dueAt: 140_000)])
        sim.advance(to: 139_000)
        sim.complete("validate", at: 139_000)
        #expect(sim.state.status == .completed)
    }

    @Test func withoutAQueueTimeoutTheCommandCarriesNoStartDeadline() throws {
        let sim = Simulator(try workflow(Self.plain))
        #expect(sim.command("validate")?.deadline == StepCommand.noDeadline)
        #expect(sim.command("validate")?.timeout == .seconds(30))
    }

    @Test func theHeartbeatTimeoutCountsFromTheStartToo() throws {
        var sim = Simulator(try workflow("""
            workflow_id: long
            steps: [{ id: crunch, type: batch, timeout: 30m, heartbeat_timeout: 30s, retry: { max_attempts: 1 } }]
            """))
        // An hour in the queue: no worker has it, so none can be presumed dead.
        sim.advance(to: 3_600_000)
        #expect(sim.state.steps[0].units[0].status == .running)
        sim.start("crunch", at: 3_600_000)
        sim.advance(to: 3_630_000)
        #expect(sim.state.status != .running)
        #expect(sim.state.steps[0].units[0].error == "no heartbeat for 30s: the worker is presumed dead")
    }

    @Test func eachItemOfAForEachStepStartsItsOwnRunTimeout() throws {
        var sim = Simulator(try workflow("""
            workflow_id: items
            steps: [{ id: ship, type: svc, timeout: 10s, for_each: { items: $.input.parcels }, retry: { max_attempts: 1 } }]
            """), input: ["parcels": [1, 2]])
        sim.start("ship", item: 1, at: 50_000)
        #expect(sim.state.timers.filter { $0.key.kind == .stepTimeout }.map(\.key.item) == [1])
        sim.advance(to: 60_000)
        #expect(sim.state.steps[0].units[1].status == .failed)
        #expect(sim.state.steps[0].units[1].error == "timed out after 10s")
    }

    @Test func aQueueTimeoutIsRefusedOnStepsWithoutAWorker() throws {
        let errors = definitionErrors("""
            workflow_id: w
            signals: [go]
            steps: [{ id: wait, type: signal, signal: go, timeout: 1h, queue_timeout: 5m }]
            """)
        #expect(errors.map(\.path) == ["steps[0].queue_timeout"])
    }
}

extension Simulator {
    /// The worker reports that it started the current attempt of a step (or item): its first heartbeat.
    mutating func start(_ step: String, item: Int? = nil, at time: Timestamp) {
        let c = command(step, item: item)!
        send(.heartbeat(step: step, item: item, attempt: c.attempt, details: nil), at: time)
    }
}

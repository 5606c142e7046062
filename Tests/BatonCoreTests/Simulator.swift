import BatonCore
import Foundation
import Testing

/// Drives the pure state machine the way the coordinator will: applies events at simulated times, keeps
/// the timers the effects arm, and records every effect.
struct Simulator {
    let workflow: Workflow
    var state: InstanceState
    var now: Timestamp
    var effects: [(at: Timestamp, effect: SagaEffect)] = []
    var lastOutcome: Outcome = .applied

    init(_ workflow: Workflow, input: JSON = [:], instanceID: String = "i-1", at now: Timestamp = 0) {
        self.workflow = workflow
        self.now = now
        let t = Saga.start(workflow, instanceID: instanceID, input: input, now: now)
        state = t.state
        effects = t.effects.map { (now, $0) }
    }

    @discardableResult
    mutating func send(_ event: SagaEvent, at time: Timestamp? = nil, writtenAt: Timestamp? = nil) -> Transition {
        if let time { now = time }
        let t = Saga.apply(workflow, to: state, event: event, now: now, writtenAt: writtenAt)
        state = t.state
        effects += t.effects.map { (now, $0) }
        lastOutcome = t.outcome
        return t
    }

    /// Fires every armed timer due at or before `time`, in due order.
    mutating func advance(to time: Timestamp) {
        while let next = state.timers.filter({ $0.dueAt <= time }).min(by: { ($0.dueAt, $0.key.description) < ($1.dueAt, $1.key.description) }) {
            send(.timerFired(next.key, dueAt: next.dueAt), at: next.dueAt)
        }
        now = max(now, time)
    }

    var dispatched: [StepCommand] { effects.compactMap { if case .dispatch(let c) = $0.effect { c } else { nil } } }
    var compensations: [StepCommand] { effects.compactMap { if case .compensate(let c) = $0.effect { c } else { nil } } }
    var tasks: [HumanTask] { effects.compactMap { if case .createTask(let t) = $0.effect { t } else { nil } } }
    /// How a task closed, and the task as it closed.
    func closed(_ taskID: String) -> (task: HumanTask, resolution: TaskResolution, by: String?)? {
        for e in effects { if case .closeTask(let t, let r, let by) = e.effect, t.taskID == taskID { return (t, r, by) } }
        return nil
    }
    var alerts: [Alert] { effects.compactMap { if case .alert(let a) = $0.effect { a } else { nil } } }

    func dispatchTimes(of step: String) -> [Timestamp] {
        effects.compactMap { if case .dispatch(let c) = $0.effect, c.step == step { $0.at } else { nil } }
    }

    /// The last command sent for a step (or item).
    func command(_ step: String, item: Int? = nil) -> StepCommand? {
        dispatched.last { $0.step == step && $0.item == item }
    }

    func status(_ step: String) -> StepStatus { state.steps[workflow.index[step]!].status }

    mutating func complete(_ step: String, item: Int? = nil, output: JSON = [:], at time: Timestamp? = nil) {
        let c = command(step, item: item)!
        send(.stepCompleted(step: step, item: item, attempt: c.attempt, output: output), at: time)
    }

    mutating func fail(_ step: String, item: Int? = nil, error: String = "boom", retryable: Bool = true, at time: Timestamp? = nil) {
        let c = command(step, item: item)!
        send(.stepFailed(step: step, item: item, attempt: c.attempt, error: error, retryable: retryable), at: time)
    }

    mutating func completeCompensation(_ step: String, item: Int? = nil, at time: Timestamp? = nil) {
        let c = compensations.last { $0.step == step && $0.item == item }!
        send(.compensationCompleted(step: step, item: item, attempt: c.attempt), at: time)
    }
}

func workflow(_ yaml: String) throws -> Workflow {
    do { return try DefinitionLoader.load(Data(yaml.utf8)) } catch {
        Issue.record("definition did not load: \(error)")
        throw error
    }
}

func definitionErrors(_ text: String) -> [DefinitionError] {
    do {
        _ = try DefinitionLoader.load(Data(text.utf8))
        Issue.record("expected errors, but it loaded")
        return []
    } catch {
        return error.errors
    }
}

let examplesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("examples")

import BatonCore
import BatonWire

/// What a batch did, recorded once its transaction committed (a batch that is tried again counts once).
public struct BatchObservations {
    public enum StepOutcome: String { case completed, failed, retried, timedOut = "timed_out" }

    public var started: [String] = []
    /// Instances whose status the batch changed (filled in once it committed, from where it began and ended).
    public var statusChanges: [(before: InstanceState?, after: InstanceState?)] = []
    public var attempts: [(workflow: String, step: String, outcome: StepOutcome, duration: Duration?)] = []
    public var compensations: [(workflow: String, step: String, completed: Bool)] = []
    public var tasks: [(workflow: String, step: String, outcome: String)] = []
    public var alerts: [Alert.Severity] = []
    public var applied = 0
    public var ignored = 0
    public var deadLetters: [DeadLetterReason] = []
    /// Commands sent, and attempts whose results came, for `Dispatches` once the batch is committed.
    public var sent: [(Dispatches.Key, Timestamp)] = []
    public var answered: [Dispatches.Key] = []

    public init() {}

    /// The time from an attempt's command to its result, when the command was sent since the partition was taken.
    public mutating func duration(_ dispatches: Dispatches, _ instance: String, _ step: String, _ item: Int?, _ attempt: Int, now: Timestamp) -> Duration? {
        let key = Dispatches.Key(instance: instance, step: step, item: item, attempt: attempt)
        answered.append(key)
        return (sent.last { $0.0 == key }?.1 ?? dispatches.sentAt[key]).map { .milliseconds(max(0, now - $0)) }
    }

    /// Reads what an applied transition did: outcomes of attempts, compensations, tasks, alerts.
    public mutating func applied(_ workflow: Workflow, event: SagaEvent?, before: InstanceState?, after: InstanceState, effects: [SagaEffect], dispatches: Dispatches, now: Timestamp) {
        applied += 1
        let id = after.instanceID
        if before == nil { started.append(workflow.id) }
        switch event {
        case .stepCompleted(let step, let item, let attempt, _):
            attempts.append((workflow.id, step, .completed, duration(dispatches, id, step, item, attempt, now: now)))
        case .stepFailed(let step, let item, let attempt, _, _):
            let index = workflow.index[step]
            let retried = effects.contains { effect in
                if case .armTimer(let key, _) = effect, key.kind == .retry, key.step == index, key.item == item { return true }
                return false
            }
            attempts.append((workflow.id, step, retried ? .retried : .failed, duration(dispatches, id, step, item, attempt, now: now)))
        case .timerFired(let key, _) where key.kind == .stepTimeout || key.kind == .heartbeat:
            if let s = key.step, workflow.steps.indices.contains(s) {
                let step = workflow.steps[s].id
                attempts.append((workflow.id, step, .timedOut, duration(dispatches, id, step, key.item, key.attempt, now: now)))
            }
        case .compensationCompleted(let step, _, _):
            compensations.append((workflow.id, step, true))
        case .compensationFailed(let step, _, _, _):
            compensations.append((workflow.id, step, false))
        default:
            break
        }
        for effect in effects {
            switch effect {
            case .dispatch(let command):
                sent.append((Dispatches.Key(instance: id, step: command.step, item: command.item, attempt: command.attempt), now))
            case .createTask(let task):
                tasks.append((workflow.id, task.step, "created"))
            case .closeTask(let task, let resolution, _):
                tasks.append((workflow.id, task.step, resolution.rawValue))
            case .alert(let alert):
                alerts.append(alert.severity)
            default:
                break
            }
        }
    }
}

/// When each running attempt's command was sent (for the step duration: command sent to result applied).
/// In memory only: attempts sent before the partition was taken are not timed.
public struct Dispatches {
    public struct Key: Hashable {
        public init(instance: String, step: String, item: Int?, attempt: Int) {
            self.instance = instance
            self.step = step
            self.item = item
            self.attempt = attempt
        }
        var instance: String
        var step: String
        var item: Int?
        var attempt: Int
    }
    public var sentAt: [Key: Timestamp] = [:]
    public init() {}
    /// At most this many are remembered (attempts whose results never come are forgotten, not kept forever).
    public static let capacity = 200_000

    public mutating func sent(_ key: Key, at now: Timestamp) {
        if sentAt.count >= Self.capacity { sentAt.removeAll(keepingCapacity: true) }
        sentAt[key] = now
    }
}

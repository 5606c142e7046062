import Foundation

/// Milliseconds since the Unix epoch. The core reads no clock: time always comes in as a value.
public typealias Timestamp = Int64

public enum InstanceStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Steps are running or about to.
    case running
    /// Nothing runs but open human tasks: the instance is suspended until a person decides.
    case waiting
    /// A step failed for good (or the instance was cancelled or timed out): in-flight steps finish, then
    /// the completed steps are compensated.
    case compensating
    /// Waiting for an operator: `resume`, `retry`, `skip` or `cancel`.
    case suspended
    case completed
    case failed
    case cancelled

    public var isFinished: Bool { self == .completed || self == .failed || self == .cancelled }
}

public enum StepStatus: String, Sendable, Hashable, Codable, CaseIterable {
    case pending, active, completed, failed, skipped
}

public enum UnitStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Not dispatched yet (a for_each item waiting for a concurrency slot).
    case pending
    case running
    /// Failed; waiting for its retry timer.
    case backoff
    case completed
    case failed
}

public enum CompensationStatus: String, Sendable, Hashable, Codable, CaseIterable {
    case running, backoff, done, failed, skipped
}

/// One execution of a step: the step itself, or one item of a `for_each` step.
public struct UnitState: Sendable, Hashable, Codable {
    public var status: UnitStatus = .pending
    /// The current (or last) attempt number; attempts only ever grow, also across manual retries.
    public var attempt: Int = 0
    public var output: JSON?
    public var error: String?
    /// Completion order within the instance.
    public var completedSeq: Int?
    public var compensation: CompensationStatus?
    public var compensationAttempt: Int = 0
    public var compensationError: String?
    /// When the compensation completed, in the instance's completion order: alerts list compensations in the
    /// order they ran.
    public var compensatedSeq: Int?
    /// What the worker last reported about a running attempt (`step.heartbeat`), and when.
    public var progress: JSON?
    public var heartbeatAt: Timestamp?
    /// A human task's open task (who claimed it, its history so far); nil once it closed.
    public var task: HumanTask?
}

public struct StepState: Sendable, Hashable, Codable {
    public var status: StepStatus = .pending
    public var units: [UnitState] = []
    /// A `for_each` step's items, as resolved when it started.
    public var items: [JSON]?
    public var output: JSON?
    public var error: String?
    public var completedSeq: Int?
    public var startedAt: Timestamp?
    public var finishedAt: Timestamp?
    /// Attempts before the last manual retry; the retry policy counts from here.
    public var attemptBase: Int = 0
    public var compensationAttemptBase: Int = 0
    /// A human task that timed out was handed to its escalation role.
    public var escalated: Bool = false
}

public enum TimerKind: String, Sendable, Hashable, Codable, CaseIterable {
    case retry, stepTimeout, taskTimeout, compensationRetry, compensationTimeout, workflowTimeout
    /// A running attempt sent no heartbeat for the step's `heartbeat_timeout`.
    case heartbeat
    /// A finished instance's retention ran out: its records are tombstoned.
    case retention
    /// A mailbox's next expiry (held by mailboxes only, never by an instance).
    case mailbox
}

/// A durable timer, identified by what it is for; firing one that is no longer armed does nothing.
public struct TimerKey: Sendable, Hashable, Codable, CustomStringConvertible {
    public var kind: TimerKind
    public var step: Int?
    public var item: Int?
    public var attempt: Int

    public init(kind: TimerKind, step: Int? = nil, item: Int? = nil, attempt: Int = 0) {
        self.kind = kind
        self.step = step
        self.item = item
        self.attempt = attempt
    }

    public var description: String {
        [kind.rawValue, step.map(String.init) ?? "-", item.map(String.init) ?? "-", String(attempt)].joined(separator: "/")
    }
}

public struct ArmedTimer: Sendable, Hashable, Codable {
    public var key: TimerKey
    public var dueAt: Timestamp
    public init(key: TimerKey, dueAt: Timestamp) {
        self.key = key
        self.dueAt = dueAt
    }
}

public enum SuspensionReason: String, Sendable, Hashable, Codable, CaseIterable {
    /// The failure path ended in `then: suspend`.
    case failure
    /// A compensation failed on every attempt; what it should undo is still in place.
    case compensationFailed
}

/// Everything the coordinator knows about one instance. It holds no history: its size grows with the
/// number of steps (and their outputs), not with the number of events applied.
public struct InstanceState: Sendable, Hashable, Codable {
    public var instanceID: String
    public var workflowID: String
    public var version: Int
    public var status: InstanceStatus
    public var input: JSON
    public var startedAt: Timestamp
    public var finishedAt: Timestamp?
    public var deadline: Timestamp?
    public var steps: [StepState]
    public var timers: [ArmedTimer] = []
    public var completionCounter: Int = 0
    /// Why the instance failed, was cancelled or is suspended.
    public var reason: String?
    public var failedStep: String?
    public var suspension: SuspensionReason?
    public var cancelRequested: Bool = false
    public var output: JSON?
    /// The most recent operator request ids (at most `InstanceState.rememberedRequests`), to apply each once.
    public var requests: [String] = []
    /// Grows on every manual restart, so that timers armed before it (the workflow timeout) cannot fire after it.
    public var generation: Int = 0
    /// The request id of the start that created the instance, when the client gave one.
    public var startRequest: String?
    /// The trace the instance's steps belong to, as the headers a tracer writes (W3C `traceparent`): kept so that
    /// a step that runs days later joins the same trace. Nil when the coordinator does not trace.
    public var trace: [String: String]?
    /// The signals received (`baton signal`), by name: the data of the last one of each. Nil until the first.
    public var signals: [String: JSON]?

    public static let rememberedRequests = 16

    /// Whether a start asking for `workflowID`, `version` (nil: the latest) and `input` is the start that
    /// created this instance (sent again) rather than a conflicting one: the same workflow, the same input as
    /// JSON values (key order does not matter), and no version or the one it runs.
    public func isSameStart(workflowID: String, version: Int?, input: JSON) -> Bool {
        self.workflowID == workflowID && (version == nil || version == self.version) && self.input == input
    }
}

/// Settings of the coordinator that the state machine needs (the same for every instance it runs).
public struct SagaSettings: Sendable, Hashable {
    /// How long a finished instance stays queryable when its definition does not say (`retention`).
    public var retention: Millis = .days(7)
    public init(retention: Millis = .days(7)) { self.retention = retention }
}

/// What happened to an instance, as the coordinator consumes it.
public enum SagaEvent: Sendable, Hashable, Codable {
    case stepCompleted(step: String, item: Int?, attempt: Int, output: JSON)
    /// `retryable: false` (a validation error, a declined card) skips the remaining attempts.
    case stepFailed(step: String, item: Int?, attempt: Int, error: String, retryable: Bool)
    case compensationCompleted(step: String, item: Int?, attempt: Int)
    case compensationFailed(step: String, item: Int?, attempt: Int, error: String)
    /// A person's decision on a human task. `data` joins the step's output; `request` names the request (the task's
    /// history records it); `override` lets the decision stand although another person has claimed the task
    /// (an admin's).
    case taskDecided(step: String, attempt: Int, approved: Bool, by: String, comment: String?, data: JSON? = nil, request: String? = nil, override: Bool = false)
    /// A person claims an open task for `claimant` (themselves, or someone an admin assigns it to), or gives it
    /// back (`claimant` nil). A task claimed by one person cannot be claimed by another, or decided by another,
    /// unless `override`.
    case taskClaimed(step: String, attempt: Int, claimant: String?, by: String, request: String?, override: Bool = false)
    /// A worker reports that a running attempt is alive (and, optionally, how far it got).
    case heartbeat(step: String, item: Int?, attempt: Int, details: JSON?)
    /// A timer came due. `dueAt` is the time the firing was for: a timer armed again since (a heartbeat moved its
    /// due time) ignores a firing for an older due time. Nil only in records written before firings carried it.
    /// A timer is applied only when it is due on the applying coordinator's clock (`now`), so that a stale,
    /// early or forged firing changes nothing.
    case timerFired(TimerKey, dueAt: Timestamp? = nil)
    /// Operator commands carry a request id: the same request delivered twice is applied once.
    case cancel(reason: String, by: String, request: String)
    /// Operator: continue a suspended instance (retry what failed).
    case resume(by: String, request: String)
    /// Operator: retry a suspended instance's failed step or compensation (nil: everything that failed).
    case retry(step: String?, by: String, request: String)
    /// Operator: treat a failed step as skipped (with an output for its dependents), or a failing compensation as done.
    case skip(step: String, output: JSON?, by: String, request: String)
    /// A record from a business topic that a `wait_for_event` step's attempt waited for, delivered by its mailbox.
    case eventReceived(step: String, attempt: Int, mailbox: String, event: EventRecord)
    /// Named data for the instance: kept for conditions and templates (`$.signals.<name>`), and completing a
    /// `signal` step waiting for it. The request id makes a signal sent twice count once.
    case signal(name: String, data: JSON, by: String?, request: String)

    /// The step the event names, if it names one.
    public var step: String? {
        switch self {
        case .stepCompleted(let step, _, _, _), .stepFailed(let step, _, _, _, _), .compensationCompleted(let step, _, _),
            .compensationFailed(let step, _, _, _), .taskDecided(let step, _, _, _, _, _, _, _), .skip(let step, _, _, _),
            .heartbeat(let step, _, _, _), .taskClaimed(let step, _, _, _, _, _), .eventReceived(let step, _, _, _):
            step
        case .retry(let step, _, _): step
        case .timerFired, .cancel, .resume, .signal: nil
        }
    }

    /// The operator request id, for operator commands.
    public var request: String? {
        switch self {
        case .cancel(_, _, let r), .resume(_, let r), .retry(_, _, let r), .skip(_, _, _, let r), .signal(_, _, _, let r): r
        default: nil
        }
    }
}

/// A command to a worker: run a step (or its compensation).
public struct StepCommand: Sendable, Hashable, Codable {
    public var instanceID: String
    public var workflowID: String
    public var workflowVersion: Int
    public var step: String
    public var type: String
    /// The worker pool: its command topic is `<namespace>.commands.<pool>`.
    public var pool: String
    public var item: Int?
    public var attempt: Int
    public var input: JSON
    /// A step's command: until when a worker may start the attempt (the dispatch plus the step's
    /// `queue_timeout`; `noDeadline` without one). A compensation's: when the coordinator stops waiting for it.
    public var deadline: Timestamp
    /// The same for every attempt of a step (or item), so that a worker's side effects happen once.
    public var idempotencyKey: String
    public var isCompensation: Bool
    /// The worker must send a heartbeat at least this often while it runs the attempt.
    public var heartbeatTimeout: Millis?
    /// A step's command: how long the attempt may run once its worker started it (nil for a compensation).
    public var timeout: Millis? = nil

    /// The deadline of a command that may wait for a worker as long as the workers are busy (9999-12-31, the
    /// latest time that reads as a date everywhere).
    public static let noDeadline: Timestamp = 253_402_300_799_999
}

/// A human task: what a person is asked to decide, who may, until when, and what happened to it so far.
public struct HumanTask: Sendable, Hashable, Codable {
    public var taskID: String
    public var instanceID: String
    public var workflowID: String
    public var step: String
    public var attempt: Int
    /// Who may decide: `role:<name>` or `user:<name>` (after an escalation, the role it was escalated to).
    public var assignee: String
    public var title: String
    public var input: JSON
    public var createdAt: Timestamp
    public var dueAt: Timestamp
    /// The person who claimed it, while one has.
    public var claimedBy: String?
    /// What happened to it, oldest first: created, notified, claimed, unclaimed, and how it closed.
    public var history: [TaskActivity]

    public init(
        taskID: String, instanceID: String, workflowID: String, step: String, attempt: Int, assignee: String, title: String, input: JSON,
        createdAt: Timestamp, dueAt: Timestamp, claimedBy: String? = nil, history: [TaskActivity] = []
    ) {
        self.taskID = taskID
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.step = step
        self.attempt = attempt
        self.assignee = assignee
        self.title = title
        self.input = input
        self.createdAt = createdAt
        self.dueAt = dueAt
        self.claimedBy = claimedBy
        self.history = history
    }

    enum CodingKeys: String, CodingKey {
        case taskID = "task_id", instanceID = "instance_id", workflowID = "workflow_id", step, attempt, assignee, title, input
        case createdAt = "created_at", dueAt = "due_at", claimedBy = "claimed_by", history
    }

    /// A task's id: its instance, step and attempt.
    public static func id(instanceID: String, step: String, attempt: Int) -> String { "\(instanceID)/\(step)/\(attempt)" }

    /// Records written before 0.2 named the fields in camel case (`taskID`, `dueAt`): they are read too.
    enum LegacyKeys: String, CodingKey { case taskID, instanceID, workflowID, createdAt, dueAt }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if c.contains(.taskID) {
            taskID = try c.decode(String.self, forKey: .taskID)
            instanceID = try c.decode(String.self, forKey: .instanceID)
            workflowID = try c.decode(String.self, forKey: .workflowID)
            createdAt = try c.decode(Timestamp.self, forKey: .createdAt)
            dueAt = try c.decode(Timestamp.self, forKey: .dueAt)
        } else {
            let legacy = try decoder.container(keyedBy: LegacyKeys.self)
            taskID = try legacy.decode(String.self, forKey: .taskID)
            instanceID = try legacy.decode(String.self, forKey: .instanceID)
            workflowID = try legacy.decode(String.self, forKey: .workflowID)
            createdAt = try legacy.decode(Timestamp.self, forKey: .createdAt)
            dueAt = try legacy.decode(Timestamp.self, forKey: .dueAt)
        }
        step = try c.decode(String.self, forKey: .step)
        attempt = try c.decode(Int.self, forKey: .attempt)
        assignee = try c.decode(String.self, forKey: .assignee)
        title = try c.decode(String.self, forKey: .title)
        input = try c.decodeIfPresent(JSON.self, forKey: .input) ?? .null
        claimedBy = try c.decodeIfPresent(String.self, forKey: .claimedBy)
        history = try c.decodeIfPresent([TaskActivity].self, forKey: .history) ?? []
    }
}

/// One entry of a human task's history.
public struct TaskActivity: Sendable, Hashable, Codable {
    public enum Action: String, Sendable, Hashable, Codable, CaseIterable {
        case created, notified, claimed, unclaimed, escalated, approved, rejected
        case timedOut = "timed_out"
        case cancelled
    }
    public var action: Action
    public var at: Timestamp
    /// The person who did it (claimed, unclaimed, approved, rejected), when a person did.
    public var by: String?
    /// created, notified, escalated: the role or user it went to; claimed: the claimant.
    public var to: String?
    public var comment: String?
    /// The request that did it, when the client named one.
    public var request: String?

    public init(_ action: Action, at: Timestamp, by: String? = nil, to: String? = nil, comment: String? = nil, request: String? = nil) {
        self.action = action
        self.at = at
        self.by = by
        self.to = to
        self.comment = comment
        self.request = request
    }

    enum CodingKeys: String, CodingKey { case action, at, by, to, comment, request = "request_id" }
}

public enum TaskResolution: String, Sendable, Hashable, Codable {
    case approved, rejected, timedOut = "timed_out", escalated, cancelled
}

public struct NotificationMessage: Sendable, Hashable, Codable {
    public var recipient: String
    public var subject: String
    public var instanceID: String
    public var taskID: String?

    public init(recipient: String, subject: String, instanceID: String, taskID: String?) {
        self.recipient = recipient
        self.subject = subject
        self.instanceID = instanceID
        self.taskID = taskID
    }
}

public struct Alert: Sendable, Hashable, Codable {
    public enum Severity: String, Sendable, Hashable, Codable { case warning, error, critical }
    public var severity: Severity
    public var instanceID: String
    public var workflowID: String
    public var step: String?
    public var message: String

    public init(severity: Severity, instanceID: String, workflowID: String, step: String?, message: String) {
        self.severity = severity
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.step = step
        self.message = message
    }
}

/// What the coordinator must do after a transition; the core only describes it.
public enum SagaEffect: Sendable, Hashable, Codable {
    case dispatch(StepCommand)
    case compensate(StepCommand)
    case armTimer(TimerKey, at: Timestamp)
    case cancelTimer(TimerKey)
    /// A human task opens (its history says created and notified).
    case createTask(HumanTask)
    /// An open task changed: claimed or given back.
    case updateTask(HumanTask)
    /// A task closed; its history ends with how.
    case closeTask(HumanTask, resolution: TaskResolution, by: String?)
    case notify(NotificationMessage)
    case alert(Alert)
    case completed(output: JSON)
    case failed(reason: String)
    case suspended(reason: String)
    case cancelled(reason: String)
    /// The instance's retention ran out: remove it and everything stored for it.
    case purge
    /// A `wait_for_event` attempt starts waiting: its subscription goes to its mailbox.
    case subscribe(EventSubscription)
    /// A `wait_for_event` attempt stopped waiting without its event (timed out, abandoned): its mailbox forgets it.
    case unsubscribe(EventSubscription)
}

public enum IgnoredReason: Error, Sendable, Hashable, CustomStringConvertible {
    /// The same event again: already applied.
    case duplicate(String)
    /// About an attempt that has been superseded.
    case stale(String)
    /// About something this instance does not have.
    case unknown(String)
    /// Not possible in the instance's current status.
    case notApplicable(String)

    public var description: String {
        switch self {
        case .duplicate(let s): "duplicate: \(s)"
        case .stale(let s): "stale: \(s)"
        case .unknown(let s): "unknown: \(s)"
        case .notApplicable(let s): "not applicable: \(s)"
        }
    }
}

public enum Outcome: Sendable, Hashable {
    case applied
    case ignored(IgnoredReason)
}

public struct Transition: Sendable, Hashable {
    public var state: InstanceState
    public var effects: [SagaEffect]
    public var outcome: Outcome
}

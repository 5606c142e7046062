import Foundation

/// A workflow: a DAG of steps with their retries, timeouts, compensations and human tasks.
public struct WorkflowDefinition: Sendable, Hashable, Codable {
    public var workflowID: String
    public var version: Int
    public var description: String?
    /// The whole workflow must finish within this; when it passes, the instance fails as `onFailure` says.
    public var timeout: Millis?
    public var onFailure: FailurePolicy
    /// How long a finished instance stays queryable before its records are tombstoned (nil: the coordinator's
    /// default, 7 days unless configured).
    public var retention: Millis?
    /// The signals an instance accepts (`baton signal ID NAME`), besides those its `signal` steps wait for.
    public var signals: [String]
    /// Business topics whose records start an instance.
    public var triggers: [TriggerDefinition]
    public var steps: [StepDefinition]

    public init(
        workflowID: String, version: Int = 1, description: String? = nil, timeout: Millis? = nil, onFailure: FailurePolicy = .init(),
        retention: Millis? = nil, signals: [String] = [], triggers: [TriggerDefinition] = [], steps: [StepDefinition]
    ) {
        self.workflowID = workflowID
        self.version = version
        self.description = description
        self.timeout = timeout
        self.onFailure = onFailure
        self.retention = retention
        self.signals = signals
        self.triggers = triggers
        self.steps = steps
    }

    /// Every signal name an instance accepts: the declared ones and those of its `signal` steps.
    public var signalNames: Set<String> { Set(signals).union(steps.compactMap(\.signal)) }

    public func step(_ id: String) -> StepDefinition? { steps.first { $0.id == id } }
}

/// A business topic whose records start instances of the workflow: each record that matches `when` starts
/// the instance named by `instanceID`, with the input `input` renders from the record.
public struct TriggerDefinition: Sendable, Hashable, Codable {
    /// The topic, as the business names it (not under the engine's namespace).
    public var topic: String
    /// A condition on the record (`$.event.value.status == "placed"`); nil starts on every record.
    public var when: String?
    /// A path into the record giving the instance id: `$.event.key` (the default) or `$.event.value.order_id`.
    public var instanceID: ValuePathText
    /// A template over `$.event` (nil: the record's value as it is).
    public var input: JSON?

    public static let defaultInstanceID = "$.event.key"

    public init(topic: String, when: String? = nil, instanceID: ValuePathText = Self.defaultInstanceID, input: JSON? = nil) {
        self.topic = topic
        self.when = when
        self.instanceID = instanceID
        self.input = input
    }
}

/// What a `wait_for_event` step waits for: a record on `topic` whose correlation value (`correlate`, read from
/// the record) equals the instance's (`equals`, read from the instance).
public struct EventWait: Sendable, Hashable, Codable {
    public var topic: String
    /// A path into the record: `$.event.key` (the default) or `$.event.value.order_id`.
    public var correlate: ValuePathText
    /// A path into the instance: `$.input.order_id`, `$.steps.charge.output.payment_id`, `$.instance.id`.
    public var equals: ValuePathText
    /// How long a matching record that arrived before the step waited is kept for it (nil: the step's timeout).
    public var ttl: Millis?
    /// One record satisfies every instance waiting for it (and stays for later ones until its time-to-live),
    /// instead of the first one only.
    public var broadcast: Bool

    public static let defaultCorrelate = "$.event.key"

    public init(topic: String, correlate: ValuePathText = Self.defaultCorrelate, equals: ValuePathText, ttl: Millis? = nil, broadcast: Bool = false) {
        self.topic = topic
        self.correlate = correlate
        self.equals = equals
        self.ttl = ttl
        self.broadcast = broadcast
    }
}

/// What happens once a step has failed for good (or the workflow timed out).
public struct FailurePolicy: Sendable, Hashable, Codable {
    public enum Then: String, Sendable, Hashable, Codable, CaseIterable {
        /// The instance ends as failed.
        case fail
        /// The instance waits for an operator: `resume`, `retry`, `skip` or `cancel`.
        case suspend
    }
    /// Run the compensations of the completed steps, in reverse order of completion.
    public var compensate: Bool = true
    /// Publish an alert to the on-call.
    public var alert: Bool = true
    public var then: Then = .fail

    public init(compensate: Bool = true, alert: Bool = true, then: Then = .fail) {
        self.compensate = compensate
        self.alert = alert
        self.then = then
    }
}

public struct RetryPolicy: Sendable, Hashable, Codable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int = 3
    public var initialBackoff: Millis = .seconds(1)
    public var multiplier: Double = 2
    public var maxBackoff: Millis = .minutes(5)
    /// A fraction: 0.2 spreads each delay over ±20%, so that retries of many instances do not arrive together.
    public var jitter: Double = 0.2

    public init(maxAttempts: Int = 3, initialBackoff: Millis = .seconds(1), multiplier: Double = 2, maxBackoff: Millis = .minutes(5), jitter: Double = 0.2) {
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.multiplier = multiplier
        self.maxBackoff = maxBackoff
        self.jitter = jitter
    }

    public static let `default` = RetryPolicy()
    /// Compensations must not give up easily: they are what keeps the system consistent.
    public static let compensationDefault = RetryPolicy(maxAttempts: 5)

    /// The delay before attempt `attempt + 1`, after attempt `attempt` failed. Jitter is derived from
    /// `seed` (instance, step, attempt), so that the same history always gives the same delay.
    public func backoff(afterAttempt attempt: Int, seed: UInt64) -> Millis {
        let exponent = Double(max(0, attempt - 1))
        let raw = Double(initialBackoff.value) * pow(multiplier, exponent)
        let capped = min(raw, Double(maxBackoff.value))
        let unit = Double(splitmix(seed) >> 11) / Double(1 << 53)  // [0, 1)
        let spread = capped * jitter * (unit * 2 - 1)
        return Millis(Int64(max(0, (capped + spread).rounded())))
    }
}

/// The undo of a step: a command of its own step type, with its own input and retries.
public struct Compensation: Sendable, Hashable, Codable {
    public var type: String
    public var worker: String?
    public var input: JSON?
    public var retry: RetryPolicy?
    public var timeout: Millis?

    public init(type: String, worker: String? = nil, input: JSON? = nil, retry: RetryPolicy? = nil, timeout: Millis? = nil) {
        self.type = type
        self.worker = worker
        self.input = input
        self.retry = retry
        self.timeout = timeout
    }

    /// The worker pool its commands go to.
    public var pool: String { worker ?? type }
}

/// Run a step once for each element of an array, in parallel.
public struct ForEach: Sendable, Hashable, Codable {
    public var items: ValuePathText
    /// At most this many items run at once; nil for all of them.
    public var maxConcurrency: Int?

    public init(items: ValuePathText, maxConcurrency: Int? = nil) {
        self.items = items
        self.maxConcurrency = maxConcurrency
    }
}

/// A path kept as text (parsed and checked by validation).
public typealias ValuePathText = String

public struct HumanTaskSpec: Sendable, Hashable, Codable {
    public enum TimeoutAction: String, Sendable, Hashable, Codable, CaseIterable {
        /// As if the assignee had rejected it.
        case reject
        /// A new task for `escalateTo`; if that one times out too, `afterEscalation` applies.
        case escalate
        /// The step fails (and the workflow takes its failure path).
        case fail
    }
    /// Who may decide, as `role:<name>` (or `user:<name>`).
    public var assignee: String
    public var title: String?
    public var onTimeout: TimeoutAction = .reject
    public var escalateTo: String?
    public var afterEscalation: TimeoutAction = .reject

    public init(assignee: String, title: String? = nil, onTimeout: TimeoutAction = .reject, escalateTo: String? = nil, afterEscalation: TimeoutAction = .reject) {
        self.assignee = assignee
        self.title = title
        self.onTimeout = onTimeout
        self.escalateTo = escalateTo
        self.afterEscalation = afterEscalation
    }
}

public struct StepDefinition: Sendable, Hashable, Codable {
    /// The built-in step type for a person's approval.
    public static let humanTaskType = "human_task"
    /// The built-in step type that waits for a record on a business topic (`event`).
    public static let eventWaitType = "wait_for_event"
    /// The built-in step type that waits for a signal (`signal`).
    public static let signalType = "signal"
    public static let builtInTypes: Set<String> = [humanTaskType, eventWaitType, signalType]
    public static let defaultTimeout = Millis.minutes(30)
    public static let defaultHumanTimeout = Millis.hours(48)

    public var id: String
    /// The step type: names the worker pool (its command topic) unless `worker` does.
    public var type: String
    /// A worker name such as `inventory.reserve`, where one type has several services.
    public var worker: String?
    public var dependsOn: [String]
    /// Input template (see `InputTemplate`); nil passes the workflow input as it is.
    public var input: JSON?
    public var retry: RetryPolicy?
    /// How long an attempt may run: a worker's step from when the worker started it (its start report,
    /// docs/wire-protocol.md), so that time waiting for a busy worker does not count (see `queueTimeout`); a human
    /// task, an event wait or a signal step from when it began waiting.
    public var timeout: Millis?
    /// A running attempt that sends no heartbeat for this long counts as failed (its worker is presumed dead),
    /// long before `timeout`. Nil: heartbeats are not required.
    public var heartbeatTimeout: Millis?
    /// How long an attempt's command may wait for a worker to start it (as Temporal's schedule-to-start); past
    /// that the attempt counts as failed and is retried. Nil: it waits as long as the workers are busy.
    public var queueTimeout: Millis?
    public var compensation: Compensation?
    /// The step runs only when this holds; otherwise it is skipped (and counts as done for its dependents).
    public var when: String?
    public var forEach: ForEach?
    public var humanTask: HumanTaskSpec?
    /// A `wait_for_event` step's event.
    public var event: EventWait?
    /// A `signal` step's signal name.
    public var signal: String?

    public init(
        id: String, type: String, worker: String? = nil, dependsOn: [String] = [], input: JSON? = nil, retry: RetryPolicy? = nil,
        timeout: Millis? = nil, heartbeatTimeout: Millis? = nil, compensation: Compensation? = nil, when: String? = nil, forEach: ForEach? = nil,
        humanTask: HumanTaskSpec? = nil, event: EventWait? = nil, signal: String? = nil, queueTimeout: Millis? = nil
    ) {
        self.id = id
        self.type = type
        self.worker = worker
        self.dependsOn = dependsOn
        self.input = input
        self.retry = retry
        self.timeout = timeout
        self.heartbeatTimeout = heartbeatTimeout
        self.queueTimeout = queueTimeout
        self.compensation = compensation
        self.when = when
        self.forEach = forEach
        self.humanTask = humanTask
        self.event = event
        self.signal = signal
    }

    public var isHumanTask: Bool { type == Self.humanTaskType }
    public var isEventWait: Bool { type == Self.eventWaitType }
    public var isSignal: Bool { type == Self.signalType }
    /// Whether a worker runs it (commands to its pool); human tasks, event waits and signals wait for the outside.
    public var hasWorker: Bool { !Self.builtInTypes.contains(type) }
    /// The worker pool its commands go to.
    public var pool: String { worker ?? type }
    /// Who or what the step is for, in a few words: its pool, or what it waits for.
    public var summary: String {
        if let a = humanTask?.assignee { return "human task: \(a)" }
        if let e = event { return "event on \(e.topic)" }
        if let s = signal { return "signal \(s)" }
        return pool
    }
    /// A step that waits for something outside (a person, a record, a signal) has one attempt unless it says otherwise.
    public var retryPolicy: RetryPolicy { retry ?? (isEventWait || isSignal ? RetryPolicy(maxAttempts: 1) : .default) }
    public var effectiveTimeout: Millis { timeout ?? (isHumanTask ? Self.defaultHumanTimeout : Self.defaultTimeout) }
}

func splitmix(_ seed: UInt64) -> UInt64 {
    var z = seed &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// A stable 64-bit hash of strings (FNV-1a), for deterministic jitter.
func stableHash(_ parts: String...) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for part in parts {
        for byte in part.utf8 {
            h ^= UInt64(byte)
            h = h &* 0x100_0000_01b3
        }
        h ^= 0xff
        h = h &* 0x100_0000_01b3
    }
    return h
}

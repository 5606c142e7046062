import BatonCore

/// An instance as clients see it (`baton status --json`, the HTTP API): every step by its id, with its
/// status, attempts, timings, output, error and compensation. This is the documented, stable view of the
/// coordinator's internal snapshot (docs/wire-protocol.md, "Reading an instance"); fields are added, never
/// renamed or removed, within a protocol version.
public struct InstanceView: Codable, Sendable, Hashable {
    public var instanceID: String
    public var workflowID: String
    public var version: Int
    public var status: InstanceStatus
    /// Why it failed, was cancelled or is suspended.
    public var reason: String?
    public var failedStep: String?
    /// For a suspended instance: `failure` (its failure path ended in suspend) or `compensation_failed`.
    public var suspension: String?
    public var input: JSON
    public var output: JSON?
    public var startedAt: Int64
    public var finishedAt: Int64?
    /// When the workflow's own timeout passes.
    public var deadline: Int64?
    /// The start request that created it, when the client named one.
    public var startRequest: String?
    /// The signals it received (`baton signal`), by name: the data of the last one of each.
    public var signals: [String: JSON]?
    public var steps: [StepView]
    /// Timers armed now: retries, timeouts, the retention of a finished instance.
    public var timers: [TimerView]

    public struct StepView: Codable, Sendable, Hashable {
        public var id: String
        public var type: String
        /// The worker pool (absent for a human task, an event wait or a signal step).
        public var pool: String?
        /// pending, active, completed, failed or skipped.
        public var status: StepStatus
        /// The current (or last) attempt; 0 before the first.
        public var attempt: Int
        public var startedAt: Int64?
        public var finishedAt: Int64?
        public var output: JSON?
        public var error: String?
        /// For a step without items: its attempt's state (pending, running, backoff, completed, failed).
        public var unit: UnitStatus?
        public var compensation: CompensationView?
        /// What the worker last reported about a running attempt, and when.
        public var progress: JSON?
        public var heartbeatAt: Int64?
        /// For a human task: the open (or last) task's id.
        public var taskID: String?
        /// For a for_each step: one entry per item.
        public var items: [ItemView]?

        enum CodingKeys: String, CodingKey {
            case id, type, pool, status, attempt, startedAt = "started_at", finishedAt = "finished_at", output, error, unit, compensation, progress
            case heartbeatAt = "heartbeat_at", taskID = "task_id", items
        }
    }

    public struct ItemView: Codable, Sendable, Hashable {
        public var index: Int
        public var status: UnitStatus
        public var attempt: Int
        public var output: JSON?
        public var error: String?
        public var compensation: CompensationView?
        public var progress: JSON?
        public var heartbeatAt: Int64?

        enum CodingKeys: String, CodingKey { case index, status, attempt, output, error, compensation, progress, heartbeatAt = "heartbeat_at" }
    }

    public struct CompensationView: Codable, Sendable, Hashable {
        /// running, backoff, done, failed or skipped.
        public var status: CompensationStatus
        public var attempt: Int
        public var error: String?
    }

    public struct TimerView: Codable, Sendable, Hashable {
        /// retry, stepTimeout, taskTimeout, compensationRetry, compensationTimeout, workflowTimeout, heartbeat, retention.
        public var kind: TimerKind
        public var step: String?
        public var item: Int?
        public var attempt: Int
        public var dueAt: Int64

        enum CodingKeys: String, CodingKey { case kind, step, item, attempt, dueAt = "due_at" }
    }

    enum CodingKeys: String, CodingKey {
        case instanceID = "instance_id", workflowID = "workflow_id", version, status, reason, failedStep = "failed_step", suspension, input, output
        case startedAt = "started_at", finishedAt = "finished_at", deadline, startRequest = "start_request", signals, steps, timers
    }

    /// The view of a state; step ids come from its workflow (without it, steps are named by position: `#1`).
    public init(_ state: InstanceState, workflow: Workflow?) {
        func stepID(_ s: Int) -> String { workflow.flatMap { s < $0.steps.count ? $0.steps[s].id : nil } ?? "#\(s + 1)" }
        instanceID = state.instanceID
        workflowID = state.workflowID
        version = state.version
        status = state.status
        reason = state.reason
        failedStep = state.failedStep
        suspension = state.suspension.map { $0 == .failure ? "failure" : "compensation_failed" }
        input = state.input
        output = state.output
        startedAt = state.startedAt
        finishedAt = state.finishedAt
        deadline = state.deadline
        startRequest = state.startRequest
        signals = state.signals
        steps = state.steps.enumerated().map { s, step in
            let definition = workflow.flatMap { s < $0.steps.count ? $0.steps[s] : nil }
            let isForEach = definition?.forEach != nil || step.items != nil
            let first = step.units.first
            func compensation(_ u: UnitState) -> CompensationView? {
                u.compensation.map { CompensationView(status: $0, attempt: u.compensationAttempt, error: u.compensationError) }
            }
            let attempt = step.units.map(\.attempt).max() ?? step.attemptBase
            return StepView(
                id: stepID(s), type: definition?.type ?? "", pool: definition.flatMap { $0.hasWorker ? $0.pool : nil }, status: step.status,
                attempt: attempt, startedAt: step.startedAt, finishedAt: step.finishedAt, output: step.output,
                error: step.error ?? (isForEach ? nil : first?.error),
                unit: isForEach ? nil : first?.status, compensation: isForEach ? nil : first.flatMap(compensation),
                progress: isForEach ? nil : first?.progress, heartbeatAt: isForEach ? nil : first?.heartbeatAt,
                taskID: definition?.isHumanTask == true && attempt > 0 ? "\(state.instanceID)/\(stepID(s))/\(attempt)" : nil,
                items: isForEach
                    ? step.units.enumerated().map { u, unit in
                        ItemView(
                            index: u, status: unit.status, attempt: unit.attempt, output: unit.output, error: unit.error, compensation: compensation(unit),
                            progress: unit.progress, heartbeatAt: unit.heartbeatAt)
                    } : nil)
        }
        timers = state.timers.map { t in
            TimerView(kind: t.key.kind, step: t.key.step.map(stepID), item: t.key.item, attempt: t.key.attempt, dueAt: t.dueAt)
        }
    }
}

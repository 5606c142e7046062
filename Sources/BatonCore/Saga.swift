/// The saga state machine: a pure function from (workflow, state, event, now) to (state, effects).
///
/// Rules, in short:
/// - Every step whose dependencies are all done (completed or skipped) starts at once, so independent
///   branches run in parallel. A step whose `when` is false is skipped, which counts as done.
/// - A failed attempt (or one that timed out) is retried after an exponential backoff until the retry
///   policy's attempts are spent; then the step has failed for good.
/// - Then the instance compensates: running steps finish first (nothing new starts), then each completed
///   step that has a compensation is compensated once every later-completed step that depends on it is;
///   independent ones run in parallel, and commands go out in reverse order of completion. Compensations
///   retry on their own; one that keeps failing suspends the instance with an alert, never silently.
/// - Events about superseded attempts, repeated events and events that do not fit the instance's status
///   change nothing, and the outcome says why.
public enum Saga {
    /// A new instance; `request` is the id of the start request that created it, when it has one.
    public static func start(
        _ workflow: Workflow, instanceID: String, input: JSON, now: Timestamp, request: String? = nil, settings: SagaSettings = .init()
    ) -> Transition {
        var state = InstanceState(
            instanceID: instanceID, workflowID: workflow.id, version: workflow.version, status: .running, input: input,
            startedAt: now, steps: Array(repeating: StepState(), count: workflow.steps.count))
        state.startRequest = request
        var machine = Machine(workflow: workflow, state: state, now: now, settings: settings)
        if let timeout = workflow.definition.timeout {
            machine.state.deadline = now + timeout.value
            machine.arm(machine.workflowTimer, at: now + timeout.value)
        }
        machine.advance()
        return Transition(state: machine.state, effects: machine.effects, outcome: .applied)
    }

    /// Applies `event` at `now`. `writtenAt` is when the event's record was written (its timestamp), when it
    /// came from a record: a start report arms the run timeout from it, not from when it was applied.
    public static func apply(
        _ workflow: Workflow, to state: InstanceState, event: SagaEvent, now: Timestamp, writtenAt: Timestamp? = nil, settings: SagaSettings = .init()
    ) -> Transition {
        var machine = Machine(workflow: workflow, state: state, now: now, settings: settings)
        machine.writtenAt = writtenAt
        if let reason = machine.handle(event) {
            return Transition(state: state, effects: [], outcome: .ignored(reason))
        }
        machine.advance()
        return Transition(state: machine.state, effects: machine.effects, outcome: .applied)
    }

    /// The timers an instance has armed (to arm again after the coordinator rebuilt its state).
    public static func timers(of state: InstanceState) -> [ArmedTimer] { state.timers }

    /// Ends an instance at once as failed, without running its failure path: for an instance the engine cannot
    /// keep going (the broker refuses its records). Open tasks close, timers go, the on-call gets a critical
    /// alert saying that nothing was compensated.
    public static func abandon(_ workflow: Workflow, _ state: InstanceState, reason: String, now: Timestamp, settings: SagaSettings = .init()) -> Transition {
        guard !state.status.isFinished else { return Transition(state: state, effects: [], outcome: .ignored(.notApplicable("the instance is \(state.status.rawValue)"))) }
        var machine = Machine(workflow: workflow, state: state, now: now, settings: settings)
        machine.abandonInstance(reason: reason)
        return Transition(state: machine.state, effects: machine.effects, outcome: .applied)
    }

    /// A finished instance written before retention existed has no retention timer: this arms it, due when
    /// the instance finished plus its retention (a coordinator does this when it rebuilds such a state).
    public static func armingRetention(_ state: InstanceState, workflow: Workflow?, settings: SagaSettings = .init()) -> InstanceState {
        guard state.status.isFinished, !state.timers.contains(where: { $0.key.kind == .retention }) else { return state }
        var armed = state
        let retention = workflow?.definition.retention ?? settings.retention
        armed.timers.append(ArmedTimer(key: TimerKey(kind: .retention), dueAt: (state.finishedAt ?? state.startedAt) + retention.value))
        return armed
    }
}

struct Machine {
    let workflow: Workflow
    var state: InstanceState
    let now: Timestamp
    /// When the event being handled was written, if it came from a record (`Saga.apply`).
    var writtenAt: Timestamp?
    let settings: SagaSettings
    var effects: [SagaEffect] = []

    init(workflow: Workflow, state: InstanceState, now: Timestamp, settings: SagaSettings) {
        self.workflow = workflow
        self.state = state
        self.now = now
        self.settings = settings
    }

    var steps: [StepDefinition] { workflow.steps }
    var workflowTimer: TimerKey { TimerKey(kind: .workflowTimeout, attempt: state.generation) }
    var policy: FailurePolicy { workflow.definition.onFailure }

    // MARK: Events

    /// Applies an event; returns why it was ignored, or nil when it was applied.
    mutating func handle(_ event: SagaEvent) -> IgnoredReason? {
        if state.status.isFinished {
            if case .timerFired(let key, let dueAt) = event, key.kind == .retention { return purge(key, dueAt: dueAt) }
            return .notApplicable("the instance is \(state.status.rawValue)")
        }
        if let request = event.request {
            if state.requests.contains(request) { return .duplicate("operator request \(request) was applied already") }
            if let reason = handleOperator(event) { return reason }
            state.requests.append(request)
            if state.requests.count > InstanceState.rememberedRequests { state.requests.removeFirst() }
            return nil
        }
        switch event {
        case .stepCompleted(let step, let item, let attempt, let output):
            return completeUnit(step: step, item: item, attempt: attempt, output: output)
        case .stepFailed(let step, let item, let attempt, let error, let retryable):
            return failUnit(step: step, item: item, attempt: attempt, error: error, retryable: retryable)
        case .compensationCompleted(let step, let item, let attempt):
            return compensationDone(step: step, item: item, attempt: attempt)
        case .compensationFailed(let step, let item, let attempt, let error):
            return compensationFailed(step: step, item: item, attempt: attempt, error: error)
        case .taskDecided(let step, let attempt, let approved, let by, let comment, let data, let request, let override):
            return decide(step: step, attempt: attempt, approved: approved, by: by, comment: comment, data: data, request: request, override: override)
        case .taskClaimed(let step, let attempt, let claimant, let by, let request, let override):
            return claim(step: step, attempt: attempt, claimant: claimant, by: by, request: request, override: override)
        case .heartbeat(let step, let item, let attempt, let details):
            return heartbeat(step: step, item: item, attempt: attempt, details: details)
        case .eventReceived(let step, let attempt, _, let event):
            return receive(step: step, attempt: attempt, event: event)
        case .timerFired(let key, let dueAt):
            return fire(key, dueAt: dueAt)
        case .cancel, .resume, .retry, .skip, .signal:
            return handleOperator(event)
        }
    }

    mutating func handleOperator(_ event: SagaEvent) -> IgnoredReason? {
        switch event {
        case .cancel(let reason, let by, _): cancel(reason: reason, by: by)
        case .resume(let by, _): retry(step: nil, by: by)
        case .retry(let step, let by, _): retry(step: step, by: by)
        case .skip(let step, let output, let by, _): skip(step: step, output: output, by: by)
        case .signal(let name, let data, _, _): receiveSignal(name: name, data: data)
        default: .notApplicable("not an operator command")
        }
    }

    /// Finds the unit an event is about, or why the event does not fit.
    func locate(step: String, item: Int?, attempt: Int, compensation: Bool = false) -> Result<(Int, Int), IgnoredReason> {
        guard let s = workflow.index[step] else { return .failure(.unknown("no step '\(step)' in \(workflow.id) v\(workflow.version)")) }
        guard attempt >= 1 else { return .failure(.unknown("attempt \(attempt) of '\(step)': attempts are numbered from 1")) }
        let st = state.steps[s]
        let u: Int
        if steps[s].forEach != nil {
            guard let item, item >= 0, item < st.units.count else {
                return .failure(.unknown("step '\(step)' has no item \(item.map(String.init) ?? "(none given)")"))
            }
            u = item
        } else {
            guard item == nil || item == 0, !st.units.isEmpty else {
                return .failure(st.units.isEmpty ? .unknown("step '\(step)' has not started") : .unknown("step '\(step)' has no items"))
            }
            u = 0
        }
        let current = compensation ? st.units[u].compensationAttempt : st.units[u].attempt
        if attempt < current { return .failure(.stale("attempt \(attempt) of '\(step)' was superseded by attempt \(current)")) }
        if attempt > current { return .failure(.unknown("attempt \(attempt) of '\(step)' was never dispatched (current: \(current))")) }
        return .success((s, u))
    }

    /// The running attempt a worker's answer is about (its step timeout disarmed), or why the answer does not fit.
    mutating func answeredUnit(step: String, item: Int?, attempt: Int, verb: String) -> Result<(Int, Int), IgnoredReason> {
        let (s, u): (Int, Int)
        switch locate(step: step, item: item, attempt: attempt) {
        case .failure(let reason): return .failure(reason)
        case .success(let found): (s, u) = found
        }
        if steps[s].isHumanTask { return .failure(.notApplicable("'\(step)' is a human task: it \(verb)")) }
        if !steps[s].hasWorker { return .failure(.notApplicable("'\(step)' is a \(steps[s].type) step: no worker answers for it")) }
        guard state.steps[s].units[u].status == .running else {
            return .failure(.duplicate("attempt \(attempt) of '\(step)' is already \(state.steps[s].units[u].status.rawValue)"))
        }
        endAttempt(s, u)
        return .success((s, u))
    }

    /// The running attempt of a unit is over (answered, timed out, abandoned): its timers go, and an event wait's
    /// mailbox forgets it (unless its event is what ended it: the mailbox knows that already).
    mutating func endAttempt(_ s: Int, _ u: Int, unsubscribe: Bool = true) {
        let attempt = state.steps[s].units[u].attempt
        if unsubscribe, steps[s].isEventWait, let subscription = subscription(s, attempt: attempt, since: nil) {
            effects.append(.unsubscribe(subscription))
        }
        disarm(TimerKey(kind: .stepTimeout, step: s, item: itemIndex(s, u), attempt: attempt))
        disarm(TimerKey(kind: .heartbeat, step: s, item: itemIndex(s, u), attempt: attempt))
        state.steps[s].units[u].progress = nil
        state.steps[s].units[u].heartbeatAt = nil
    }

    /// A worker says a running attempt is alive: its heartbeat timeout starts again. The first heartbeat of an
    /// attempt says that the worker started it.
    mutating func heartbeat(step: String, item: Int?, attempt: Int, details: JSON?) -> IgnoredReason? {
        let (s, u): (Int, Int)
        switch locate(step: step, item: item, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let found): (s, u) = found
        }
        if !steps[s].hasWorker { return .notApplicable("'\(step)' is a \(steps[s].type) step: it has no worker to send heartbeats") }
        guard state.steps[s].units[u].status == .running else {
            return .stale("attempt \(attempt) of '\(step)' is \(state.steps[s].units[u].status.rawValue), not running")
        }
        if state.steps[s].units[u].heartbeatAt == nil {
            // The attempt's first heartbeat is its start report: its run timeout counts from when the worker sent it
            // (the record's timestamp), replacing the queue timeout (docs/wire-protocol.md, "Reporting the start").
            // A report that waited behind other events (a busy partition, a takeover) does not lengthen the run.
            // Never later than now, and never before the step started: a worker's clock behind the coordinator's
            // cannot shorten the run by more than that. The heartbeat timeout below still counts from now: a
            // heartbeat that waited in a queue must not make a live attempt look dead.
            let reported = min(now, max(writtenAt ?? now, state.steps[s].startedAt ?? now))
            arm(TimerKey(kind: .stepTimeout, step: s, item: itemIndex(s, u), attempt: attempt), at: reported + steps[s].effectiveTimeout.value)
        }
        state.steps[s].units[u].heartbeatAt = now
        if let details { state.steps[s].units[u].progress = details }
        if let timeout = steps[s].heartbeatTimeout {
            arm(TimerKey(kind: .heartbeat, step: s, item: itemIndex(s, u), attempt: attempt), at: now + timeout.value)
        }
        return nil
    }

    /// The retention of a finished instance ran out: everything stored for it goes.
    mutating func purge(_ key: TimerKey, dueAt: Timestamp?) -> IgnoredReason? {
        if case .failure(let reason) = armedTimer(key, firingFor: dueAt) { return reason }
        state.timers.removeAll()
        effects.append(.purge)
        return nil
    }

    mutating func completeUnit(step: String, item: Int?, attempt: Int, output: JSON) -> IgnoredReason? {
        switch answeredUnit(step: step, item: item, attempt: attempt, verb: "completes by a decision") {
        case .failure(let reason): return reason
        case .success(let (s, u)): finishUnit(s, u, output: output)
        }
        return nil
    }

    mutating func finishUnit(_ s: Int, _ u: Int, output: JSON) {
        state.completionCounter += 1
        state.steps[s].units[u].status = .completed
        state.steps[s].units[u].output = output
        state.steps[s].units[u].error = nil
        state.steps[s].units[u].completedSeq = state.completionCounter
        if state.steps[s].units.allSatisfy({ $0.status == .completed }) {
            completeStep(s, output: steps[s].forEach == nil ? output : .array(state.steps[s].units.map { $0.output ?? .null }))
        } else if steps[s].forEach != nil, state.status == .running || state.status == .waiting {
            dispatchPendingItems(s)
        }
    }

    mutating func completeStep(_ s: Int, output: JSON) {
        state.completionCounter += 1
        state.steps[s].status = .completed
        state.steps[s].output = output
        state.steps[s].error = nil
        state.steps[s].completedSeq = state.completionCounter
        state.steps[s].finishedAt = now
    }

    mutating func failUnit(step: String, item: Int?, attempt: Int, error: String, retryable: Bool) -> IgnoredReason? {
        switch answeredUnit(step: step, item: item, attempt: attempt, verb: "fails by a rejection or a timeout") {
        case .failure(let reason): return reason
        case .success(let (s, u)): attemptFailed(s, u, error: error, retryable: retryable)
        }
        return nil
    }

    /// A failed attempt: back off and retry, or fail the step for good.
    mutating func attemptFailed(_ s: Int, _ u: Int, error: String, retryable: Bool) {
        let policy = steps[s].retryPolicy
        let attempt = state.steps[s].units[u].attempt
        let used = attempt - state.steps[s].attemptBase
        state.steps[s].units[u].error = error
        if retryable, used < policy.maxAttempts, state.status == .running || state.status == .waiting {
            state.steps[s].units[u].status = .backoff
            let seed = stableHash(state.instanceID, steps[s].id, String(u), String(attempt))
            let delay = policy.backoff(afterAttempt: used, seed: seed)
            arm(TimerKey(kind: .retry, step: s, item: itemIndex(s, u), attempt: attempt), at: now + delay.value)
        } else {
            state.steps[s].units[u].status = .failed
            let what = steps[s].forEach != nil ? "item \(u) of '\(steps[s].id)'" : "'\(steps[s].id)'"
            let reason = retryable && used >= policy.maxAttempts
                ? "\(what) failed after \(used) attempt\(used == 1 ? "" : "s"): \(error)"
                : "\(what) failed: \(error)"
            failStep(s, reason: reason)
        }
    }

    mutating func failStep(_ s: Int, reason: String) {
        state.steps[s].status = .failed
        state.steps[s].error = reason
        state.steps[s].finishedAt = now
        // Other items of a for_each step stop too: the step as a whole has failed.
        for u in state.steps[s].units.indices where state.steps[s].units[u].status == .pending || state.steps[s].units[u].status == .backoff {
            abandonUnit(s, u, why: "abandoned: \(reason)")
        }
        beginFailure(reason: reason, step: steps[s].id)
    }

    /// Enters the failure path (once): nothing new starts; retries waiting and open human tasks are dropped.
    mutating func beginFailure(reason: String, step: String?) {
        guard state.status == .running || state.status == .waiting else { return }
        state.status = .compensating
        state.reason = reason
        state.failedStep = step
        disarm(workflowTimer)
        for s in state.steps.indices {
            for u in state.steps[s].units.indices {
                let unit = state.steps[s].units[u]
                if unit.status == .backoff || unit.status == .pending {
                    abandonUnit(s, u, why: "abandoned: \(reason)")
                } else if unit.status == .running, !steps[s].hasWorker {
                    // Nothing will answer for it: a task closes, an event wait or a signal step stops waiting.
                    abandonUnit(s, u, why: "closed: \(reason)")
                }
            }
            if state.steps[s].status == .active, state.steps[s].units.allSatisfy({ $0.status != .running }),
                state.steps[s].units.contains(where: { $0.status == .failed })
            {
                state.steps[s].status = .failed
                state.steps[s].finishedAt = now
                state.steps[s].error = state.steps[s].error ?? "abandoned: \(reason)"
            }
        }
    }

    mutating func abandonInstance(reason: String) {
        for s in state.steps.indices {
            for u in state.steps[s].units.indices where [.running, .backoff, .pending].contains(state.steps[s].units[u].status) {
                abandonUnit(s, u, why: "abandoned: \(reason)")
            }
            if state.steps[s].status == .active {
                state.steps[s].status = .failed
                state.steps[s].finishedAt = now
            }
        }
        let undone = state.steps.contains { $0.units.contains { $0.status == .completed && $0.compensation != .done } }
        let left = undone ? "; nothing was compensated: what its completed steps did is still in place" : ""
        effects.append(.alert(Alert(severity: .critical, instanceID: state.instanceID, workflowID: workflow.id, step: state.failedStep, message: "\(reason)\(left)")))
        finish(.failed, reason: reason)
    }

    /// Stops a unit that has not finished: its timers go, an open task closes.
    mutating func abandonUnit(_ s: Int, _ u: Int, why: String) {
        let unit = state.steps[s].units[u]
        let item = itemIndex(s, u)
        switch unit.status {
        case .backoff: disarm(TimerKey(kind: .retry, step: s, item: item, attempt: unit.attempt))
        case .running:
            if steps[s].isHumanTask {
                disarm(TimerKey(kind: .taskTimeout, step: s, attempt: unit.attempt))
                closeTask(s, u, .cancelled, TaskActivity(.cancelled, at: now, comment: why))
            } else {
                endAttempt(s, u)
            }
        default: break
        }
        state.steps[s].units[u].status = .failed
        state.steps[s].units[u].error = state.steps[s].units[u].error ?? why
    }

    /// The open task of a human task's attempt, or why an event about it does not fit.
    func openTask(step: String, attempt: Int) -> Result<(Int, HumanTask), IgnoredReason> {
        guard let s = workflow.index[step] else { return .failure(.unknown("no step '\(step)'")) }
        guard steps[s].isHumanTask else { return .failure(.notApplicable("'\(step)' is not a human task")) }
        switch locate(step: step, item: nil, attempt: attempt) {
        case .failure(let reason): return .failure(reason)
        case .success(let found):
            guard state.steps[s].units[found.1].status == .running else {
                return .failure(.duplicate("the task for attempt \(attempt) of '\(step)' is already closed"))
            }
            return .success((s, state.steps[s].units[found.1].task ?? makeTask(s, attempt: attempt, createdAt: now)))
        }
    }

    mutating func decide(
        step: String, attempt: Int, approved: Bool, by: String, comment: String?, data: JSON?, request: String?, override: Bool
    ) -> IgnoredReason? {
        let s: Int
        let task: HumanTask
        switch openTask(step: step, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let found): (s, task) = found
        }
        if let claimant = task.claimedBy, claimant != by, !override {
            return .notApplicable("the task is claimed by \(claimant): only they can decide it")
        }
        let u = 0
        disarm(TimerKey(kind: .taskTimeout, step: s, attempt: attempt))
        closeTask(s, u, approved ? .approved : .rejected, TaskActivity(approved ? .approved : .rejected, at: now, by: by, comment: comment, request: request))
        var output: [String: JSON] = ["approved": .bool(approved), "by": .string(by)]
        if let comment { output["comment"] = .string(comment) }
        if let data { output["data"] = data }
        if approved {
            finishUnit(s, u, output: .object(output))
        } else {
            state.steps[s].units[u].status = .failed
            state.steps[s].units[u].output = .object(output)
            failStep(s, reason: "'\(step)' was rejected by \(by)\(comment.map { ": \($0)" } ?? "")")
        }
        return nil
    }

    mutating func claim(step: String, attempt: Int, claimant: String?, by: String, request: String?, override: Bool) -> IgnoredReason? {
        let s: Int
        var task: HumanTask
        switch openTask(step: step, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let found): (s, task) = found
        }
        if let claimant {
            if task.claimedBy == claimant { return .duplicate("the task is claimed by \(claimant) already") }
            if let holder = task.claimedBy, !override { return .notApplicable("the task is claimed by \(holder)") }
            task.history.append(TaskActivity(.claimed, at: now, by: by, to: claimant, request: request))
        } else {
            guard let holder = task.claimedBy else { return .duplicate("the task is not claimed") }
            if holder != by, !override { return .notApplicable("the task is claimed by \(holder): only they can give it back") }
            task.history.append(TaskActivity(.unclaimed, at: now, by: by, request: request))
        }
        task.claimedBy = claimant
        state.steps[s].units[0].task = task
        effects.append(.updateTask(task))
        return nil
    }

    /// Closes the open task of a human task's unit with `resolution`, its history ending with `activity`.
    mutating func closeTask(_ s: Int, _ u: Int, _ resolution: TaskResolution, _ activity: TaskActivity) {
        let attempt = state.steps[s].units[u].attempt
        var task = state.steps[s].units[u].task ?? makeTask(s, attempt: attempt, createdAt: now)
        task.history.append(activity)
        state.steps[s].units[u].task = nil
        effects.append(.closeTask(task, resolution: resolution, by: activity.by))
    }

    /// The task for an attempt of a human task, as it opens.
    func makeTask(_ s: Int, attempt: Int, createdAt: Timestamp) -> HumanTask {
        let step = steps[s]
        let spec = step.humanTask ?? HumanTaskSpec(assignee: "role:admin")
        let assignee = state.steps[s].escalated ? (spec.escalateTo ?? spec.assignee) : spec.assignee
        return HumanTask(
            taskID: taskID(s, attempt: attempt), instanceID: state.instanceID, workflowID: workflow.id, step: step.id, attempt: attempt,
            assignee: assignee, title: spec.title ?? "\(workflow.id): \(step.id)", input: renderInput(s, item: nil), createdAt: createdAt,
            dueAt: createdAt + step.effectiveTimeout.value)
    }

    /// The armed timer a firing is for: armed, for the due time the firing names (when it names one), and due
    /// now. Anything else is a stale firing (the timer fired already, was cancelled, or was armed again for a
    /// later time, as each heartbeat does), or an early or forged one: it changes nothing, and the timer fires
    /// when it is due.
    func armedTimer(_ key: TimerKey, firingFor dueAt: Timestamp?) -> Result<Int, IgnoredReason> {
        guard let index = state.timers.firstIndex(where: { $0.key == key }) else {
            return .failure(.stale("timer \(key) is not armed (it fired already or was cancelled)"))
        }
        let armed = state.timers[index].dueAt
        if let dueAt, dueAt != armed {
            return .failure(.stale("timer \(key) is armed for \(armed), not for \(dueAt) as this firing says (armed again since)"))
        }
        guard armed <= now else {
            return .failure(.stale("timer \(key) is not due until \(armed); it is \(now) on this coordinator's clock"))
        }
        return .success(index)
    }

    mutating func fire(_ key: TimerKey, dueAt: Timestamp?) -> IgnoredReason? {
        let index: Int
        switch armedTimer(key, firingFor: dueAt) {
        case .success(let i): index = i
        case .failure(let reason): return reason
        }
        state.timers.remove(at: index)
        let s = key.step ?? 0
        let u = key.item ?? 0
        switch key.kind {
        case .workflowTimeout:
            let reason = "the workflow timed out after \(workflow.definition.timeout ?? Millis(0))"
            for s in state.steps.indices {
                for u in state.steps[s].units.indices where state.steps[s].units[u].status == .running {
                    abandonUnit(s, u, why: reason)
                }
                if state.steps[s].status == .active { state.steps[s].status = .failed; state.steps[s].error = reason; state.steps[s].finishedAt = now }
            }
            beginFailure(reason: reason, step: nil)
        case .retry:
            guard state.status == .running || state.status == .waiting, state.steps[s].units[u].status == .backoff else { return nil }
            dispatchUnit(s, u)
        case .stepTimeout:
            guard state.steps[s].units[u].status == .running else { return nil }
            let queued = steps[s].hasWorker && state.steps[s].units[u].heartbeatAt == nil
            endAttempt(s, u)
            let error: String =
                if queued, let queueTimeout = steps[s].queueTimeout {
                    "not started within its queue_timeout of \(queueTimeout): no worker took the command"
                } else if let event = steps[s].event {
                    "no record on \(event.topic) matched within \(steps[s].effectiveTimeout)"
                } else if let signal = steps[s].signal {
                    "no signal '\(signal)' came within \(steps[s].effectiveTimeout)"
                } else {
                    "timed out after \(steps[s].effectiveTimeout)"
                }
            attemptFailed(s, u, error: error, retryable: true)
        case .heartbeat:
            guard state.steps[s].units[u].status == .running else { return nil }
            let silent = steps[s].heartbeatTimeout ?? Millis(0)
            endAttempt(s, u)
            attemptFailed(s, u, error: "no heartbeat for \(silent): the worker is presumed dead", retryable: true)
        case .retention:
            return .notApplicable("the instance is \(state.status.rawValue), not finished")
        case .mailbox:
            return .notApplicable("a mailbox timer is not an instance's")
        case .taskTimeout:
            humanTaskTimedOut(s)
        case .compensationRetry:
            guard state.steps[s].units[u].compensation == .backoff else { return nil }
            dispatchCompensation(s, u)
        case .compensationTimeout:
            guard state.steps[s].units[u].compensation == .running else { return nil }
            compensationAttemptFailed(s, u, error: "timed out after \(compensationTimeout(s))")
        }
        return nil
    }

    mutating func humanTaskTimedOut(_ s: Int) {
        guard let spec = steps[s].humanTask, state.steps[s].units.first?.status == .running else { return }
        let action = state.steps[s].escalated ? spec.afterEscalation : spec.onTimeout
        let timeout = steps[s].effectiveTimeout
        switch action {
        case .escalate:
            closeTask(s, 0, .escalated, TaskActivity(.escalated, at: now, to: spec.escalateTo ?? spec.assignee, comment: "nobody decided within \(timeout)"))
            state.steps[s].escalated = true
            dispatchUnit(s, 0)
        case .reject, .fail:
            closeTask(s, 0, .timedOut, TaskActivity(.timedOut, at: now, comment: "nobody decided within \(timeout)"))
            state.steps[s].units[0].status = .failed
            let verb = action == .reject ? "was rejected: nobody decided" : "failed: nobody decided"
            failStep(s, reason: "'\(steps[s].id)' \(verb) within \(timeout)")
        }
    }

    /// The running compensation attempt an answer is about (its timeout disarmed), or why the answer does not fit.
    mutating func answeredCompensation(step: String, item: Int?, attempt: Int) -> Result<(Int, Int), IgnoredReason> {
        let (s, u): (Int, Int)
        switch locate(step: step, item: item, attempt: attempt, compensation: true) {
        case .failure(let reason): return .failure(reason)
        case .success(let found): (s, u) = found
        }
        guard state.steps[s].units[u].compensation == .running else {
            return .failure(.duplicate("compensation attempt \(attempt) of '\(step)' is already \(state.steps[s].units[u].compensation?.rawValue ?? "not started")"))
        }
        disarm(TimerKey(kind: .compensationTimeout, step: s, item: itemIndex(s, u), attempt: attempt))
        return .success((s, u))
    }

    mutating func compensationDone(step: String, item: Int?, attempt: Int) -> IgnoredReason? {
        switch answeredCompensation(step: step, item: item, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let (s, u)):
            state.completionCounter += 1
            state.steps[s].units[u].compensation = .done
            state.steps[s].units[u].compensationError = nil
            state.steps[s].units[u].compensatedSeq = state.completionCounter
        }
        return nil
    }

    mutating func compensationFailed(step: String, item: Int?, attempt: Int, error: String) -> IgnoredReason? {
        switch answeredCompensation(step: step, item: item, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let (s, u)): compensationAttemptFailed(s, u, error: error)
        }
        return nil
    }

    mutating func compensationAttemptFailed(_ s: Int, _ u: Int, error: String) {
        let policy = steps[s].compensation?.retry ?? .compensationDefault
        let attempt = state.steps[s].units[u].compensationAttempt
        let used = attempt - state.steps[s].compensationAttemptBase
        state.steps[s].units[u].compensationError = error
        if used < policy.maxAttempts {
            state.steps[s].units[u].compensation = .backoff
            let seed = stableHash(state.instanceID, steps[s].id, String(u), "compensation", String(attempt))
            arm(TimerKey(kind: .compensationRetry, step: s, item: itemIndex(s, u), attempt: attempt), at: now + policy.backoff(afterAttempt: used, seed: seed).value)
        } else {
            state.steps[s].units[u].compensation = .failed
            let what = steps[s].forEach != nil ? "item \(u) of '\(steps[s].id)'" : "'\(steps[s].id)'"
            let reason = "the compensation of \(what) failed after \(used) attempts: \(error)"
            state.status = .suspended
            state.suspension = .compensationFailed
            state.reason = reason
            effects.append(.alert(Alert(severity: .critical, instanceID: state.instanceID, workflowID: workflow.id, step: steps[s].id, message: "\(reason); the instance is suspended for manual intervention")))
            effects.append(.suspended(reason: reason))
        }
    }

    mutating func cancel(reason: String, by: String) -> IgnoredReason? {
        let why = "cancelled by \(by): \(reason)"
        switch state.status {
        case .running, .waiting:
            state.cancelRequested = true
            beginFailure(reason: why, step: nil)
        case .compensating:
            guard !state.cancelRequested else { return .duplicate("the instance is already being cancelled") }
            state.cancelRequested = true
            state.reason = "\(state.reason ?? ""); \(why)"
        case .suspended:
            state.cancelRequested = true
            for s in state.steps.indices {
                for u in state.steps[s].units.indices where state.steps[s].units[u].compensation == .backoff {
                    disarm(TimerKey(kind: .compensationRetry, step: s, item: itemIndex(s, u), attempt: state.steps[s].units[u].compensationAttempt))
                    state.steps[s].units[u].compensation = .failed
                }
            }
            if state.suspension == .compensationFailed || !policy.compensate || compensationsSettled {
                finish(.cancelled, reason: why)
            } else {
                state.status = .compensating
                state.suspension = nil
                state.reason = why
            }
        case .completed, .failed, .cancelled:
            return .notApplicable("the instance is \(state.status.rawValue)")
        }
        return nil
    }

    mutating func retry(step: String?, by: String) -> IgnoredReason? {
        guard state.status == .suspended else { return .notApplicable("only a suspended instance can be resumed or retried; it is \(state.status.rawValue)") }
        if let step, workflow.index[step] == nil { return .unknown("no step '\(step)'") }
        let only = step.flatMap { workflow.index[$0] }
        switch state.suspension {
        case .compensationFailed:
            var any = false
            for s in state.steps.indices where only == nil || only == s {
                for u in state.steps[s].units.indices where state.steps[s].units[u].compensation == .failed {
                    state.steps[s].compensationAttemptBase = state.steps[s].units[u].compensationAttempt
                    state.steps[s].units[u].compensation = .backoff
                    dispatchCompensation(s, u)
                    any = true
                }
            }
            guard any else { return .notApplicable(step.map { "'\($0)' has no failed compensation" } ?? "no compensation has failed") }
            state.status = .compensating
            state.suspension = nil
        case .failure, nil:
            if let only, state.steps[only].status != .failed {
                return .notApplicable("'\(steps[only].id)' has not failed; it is \(state.steps[only].status.rawValue)")
            }
            restartForward()
        }
        return nil
    }

    mutating func skip(step: String, output: JSON?, by: String) -> IgnoredReason? {
        guard state.status == .suspended else { return .notApplicable("only a suspended instance's steps can be skipped; it is \(state.status.rawValue)") }
        guard let s = workflow.index[step] else { return .unknown("no step '\(step)'") }
        switch state.suspension {
        case .compensationFailed:
            guard state.steps[s].units.contains(where: { $0.compensation == .failed }) else {
                return .notApplicable("the compensation of '\(step)' has not failed")
            }
            for u in state.steps[s].units.indices where state.steps[s].units[u].compensation == .failed {
                state.steps[s].units[u].compensation = .skipped
                state.steps[s].units[u].compensationError = "skipped by \(by)"
            }
            if !state.steps.flatMap(\.units).contains(where: { $0.compensation == .failed }) {
                state.status = .compensating
                state.suspension = nil
            }
        case .failure, nil:
            guard state.steps[s].status == .failed else {
                return .notApplicable("'\(step)' has not failed; it is \(state.steps[s].status.rawValue)")
            }
            state.steps[s].status = .skipped
            state.steps[s].output = output
            state.steps[s].error = "skipped by \(by)"
            state.steps[s].finishedAt = now
            restartForward()
        }
        return nil
    }

    /// After a failure: steps that failed, were abandoned, or were compensated run again (with new attempt
    /// numbers); completed steps that were not undone keep their results.
    mutating func restartForward() {
        for s in state.steps.indices {
            let st = state.steps[s]
            let undone = st.units.contains { $0.compensation == .done || $0.compensation == .skipped }
            if st.status == .failed || st.status == .active || (st.status == .completed && undone) || (st.status == .skipped && st.units.isEmpty && st.error == nil) {
                let maxAttempt = st.units.map(\.attempt).max() ?? st.attemptBase
                let maxCompensation = st.units.map(\.compensationAttempt).max() ?? st.compensationAttemptBase
                state.steps[s] = StepState(attemptBase: max(maxAttempt, st.attemptBase), compensationAttemptBase: max(maxCompensation, st.compensationAttemptBase))
            }
        }
        state.status = .running
        state.suspension = nil
        state.reason = nil
        state.failedStep = nil
        state.cancelRequested = false
        state.generation += 1
        if let timeout = workflow.definition.timeout {
            state.deadline = now + timeout.value
            arm(workflowTimer, at: now + timeout.value)
        }
    }

    // MARK: Progress

    /// Moves the instance forward as far as it can go without another event.
    mutating func advance() {
        switch state.status {
        case .running, .waiting:
            startReadySteps()
            guard state.status == .running || state.status == .waiting else { return advance() }
            if state.steps.allSatisfy({ $0.status == .completed || $0.status == .skipped }) {
                var output: [String: JSON] = [:]
                for (s, deps) in workflow.dependents.enumerated() where deps.isEmpty && state.steps[s].status == .completed {
                    output[steps[s].id] = state.steps[s].output ?? .null
                }
                disarm(workflowTimer)
                state.output = .object(output)
                finish(.completed, reason: nil)
                return
            }
            // Waiting: nothing runs on a worker or waits for a retry, only for the outside (a person, a record, a signal).
            let busy = state.steps.indices.contains { s in
                state.steps[s].units.contains { $0.status == .backoff || ($0.status == .running && steps[s].hasWorker) }
            }
            let openTasks = state.steps.indices.contains { s in !steps[s].hasWorker && state.steps[s].units.first?.status == .running }
            state.status = !busy && openTasks ? .waiting : .running
        case .compensating:
            let inFlight = state.steps.contains { $0.units.contains { $0.status == .running } }
            if inFlight { return }
            for s in state.steps.indices where state.steps[s].status == .active {
                state.steps[s].status = .failed
                state.steps[s].finishedAt = state.steps[s].finishedAt ?? now
            }
            if policy.compensate { startCompensations() }
            if compensationsSettled, state.status == .compensating {
                if state.cancelRequested {
                    finish(.cancelled, reason: state.reason ?? "cancelled")
                } else if policy.then == .suspend {
                    state.status = .suspended
                    state.suspension = .failure
                    let reason = state.reason ?? "failed"
                    if policy.alert {
                        effects.append(.alert(Alert(severity: .error, instanceID: state.instanceID, workflowID: workflow.id, step: state.failedStep, message: "\(reason)\(compensationSummary); suspended for manual intervention")))
                    }
                    effects.append(.suspended(reason: reason))
                } else {
                    if policy.alert {
                        effects.append(.alert(Alert(severity: .error, instanceID: state.instanceID, workflowID: workflow.id, step: state.failedStep, message: "\(state.reason ?? "failed")\(compensationSummary)")))
                    }
                    finish(.failed, reason: state.reason ?? "failed")
                }
            }
        case .suspended, .completed, .failed, .cancelled:
            return
        }
    }

    /// The steps that were undone, in the order their compensations completed.
    var compensationSummary: String {
        let undone = state.steps.indices.compactMap { s -> (Int, String)? in
            let seqs = state.steps[s].units.compactMap { $0.compensation == .done ? $0.compensatedSeq ?? 0 : nil }
            return seqs.max().map { ($0, steps[s].id) }
        }
        return undone.isEmpty ? "" : "; compensated: \(undone.sorted { $0.0 < $1.0 }.map(\.1).joined(separator: ", "))"
    }

    mutating func finish(_ status: InstanceStatus, reason: String?) {
        state.status = status
        state.finishedAt = now
        state.suspension = nil
        // The state says why it ended (a cancellation's reason replaces the failure it may have followed).
        if let reason, status != .completed { state.reason = reason }
        for timer in state.timers { effects.append(.cancelTimer(timer.key)) }
        state.timers.removeAll()
        // Kept for its retention, then purged (a timer like any other, so that a rebuild keeps it).
        let retention = workflow.definition.retention ?? settings.retention
        arm(TimerKey(kind: .retention), at: now + retention.value)
        switch status {
        case .completed: effects.append(.completed(output: state.output ?? .object([:])))
        case .failed: effects.append(.failed(reason: reason ?? "failed"))
        case .cancelled: effects.append(.cancelled(reason: reason ?? "cancelled"))
        default: break
        }
    }

    /// Starts every pending step whose dependencies are done. One pass in topological order is enough:
    /// a step skipped here is seen as done by the steps after it.
    mutating func startReadySteps() {
        for s in workflow.topologicalOrder {
            guard state.status == .running || state.status == .waiting else { return }
            guard state.steps[s].status == .pending else { continue }
            guard workflow.dependencies[s].allSatisfy({ state.steps[$0].status == .completed || state.steps[$0].status == .skipped }) else { continue }
            if let condition = workflow.conditions[s], !condition.evaluate(in: context(for: s)) {
                state.steps[s].status = .skipped
                state.steps[s].startedAt = now
                state.steps[s].finishedAt = now
                continue
            }
            startStep(s)
        }
    }

    mutating func startStep(_ s: Int) {
        state.steps[s].status = .active
        state.steps[s].startedAt = now
        let base = state.steps[s].attemptBase
        if let forEach = steps[s].forEach {
            let resolved = (try? ValuePath(parsing: forEach.items))?.resolve(in: context(for: s))
            guard case .array(let items)? = resolved else {
                let found = resolved.map { $0.kind } ?? "nothing"
                state.steps[s].units = [UnitState(status: .failed, attempt: base, error: "for_each items \(forEach.items) is \(found), not an array")]
                state.steps[s].items = []
                failStep(s, reason: "'\(steps[s].id)' cannot start: for_each items \(forEach.items) is \(found), not an array")
                return
            }
            state.steps[s].items = items
            state.steps[s].units = Array(repeating: UnitState(attempt: base), count: items.count)
            if items.isEmpty {
                completeStep(s, output: .array([]))
                return
            }
            dispatchPendingItems(s)
        } else {
            state.steps[s].units = [UnitState(attempt: base)]
            dispatchUnit(s, 0)
        }
    }

    mutating func dispatchPendingItems(_ s: Int) {
        let cap = steps[s].forEach?.maxConcurrency ?? Int.max
        var running = state.steps[s].units.filter { $0.status == .running || $0.status == .backoff }.count
        for u in state.steps[s].units.indices where state.steps[s].units[u].status == .pending {
            guard running < cap else { break }
            dispatchUnit(s, u)
            running += 1
        }
    }

    /// Sends the next attempt of a unit: a command to its worker pool, or a task for a person.
    mutating func dispatchUnit(_ s: Int, _ u: Int) {
        let step = steps[s]
        state.steps[s].units[u].attempt += 1
        state.steps[s].units[u].status = .running
        let attempt = state.steps[s].units[u].attempt
        let timeout = step.effectiveTimeout.value
        let item = itemIndex(s, u)
        let input = renderInput(s, item: item)
        if step.isHumanTask {
            var task = makeTask(s, attempt: attempt, createdAt: now)
            task.history = [TaskActivity(.created, at: now, to: task.assignee), TaskActivity(.notified, at: now, to: task.assignee)]
            state.steps[s].units[u].task = task
            effects.append(.createTask(task))
            effects.append(.notify(NotificationMessage(recipient: task.assignee, subject: "New task: \(task.title)", instanceID: state.instanceID, taskID: task.taskID)))
            arm(TimerKey(kind: .taskTimeout, step: s, attempt: attempt), at: now + timeout)
        } else if step.isEventWait {
            guard let subscription = subscription(s, attempt: attempt, since: now) else {
                let equals = step.event?.equals ?? "its correlation path"
                state.steps[s].units[u].status = .failed
                state.steps[s].units[u].error = "\(equals) is missing or null: there is no value to wait for"
                failStep(s, reason: "'\(step.id)' cannot wait for an event: \(equals) is missing or null")
                return
            }
            effects.append(.subscribe(subscription))
            arm(TimerKey(kind: .stepTimeout, step: s, item: item, attempt: attempt), at: now + timeout)
        } else if step.isSignal {
            if let name = step.signal, let data = state.signals?[name] {
                // The signal came before the step waited for it: the step completes at once.
                finishUnit(s, u, output: data)
                return
            }
            arm(TimerKey(kind: .stepTimeout, step: s, item: item, attempt: attempt), at: now + timeout)
        } else {
            effects.append(
                .dispatch(
                    StepCommand(
                        instanceID: state.instanceID, workflowID: workflow.id, workflowVersion: workflow.version, step: step.id, type: step.type,
                        pool: step.pool, item: item, attempt: attempt, input: input, deadline: step.queueTimeout.map { now + $0.value } ?? StepCommand.noDeadline,
                        idempotencyKey: idempotencyKey(s, item: item, compensation: false), isCompensation: false,
                        heartbeatTimeout: step.heartbeatTimeout, timeout: step.effectiveTimeout)))
            // The run timeout and the heartbeat timeout start with the worker's start report (`heartbeat`); until
            // then only the queue timeout, when the step has one, bounds the wait for a worker.
            if let queueTimeout = step.queueTimeout {
                arm(TimerKey(kind: .stepTimeout, step: s, item: item, attempt: attempt), at: now + queueTimeout.value)
            }
        }
    }

    // MARK: Compensation

    func needsCompensation(_ unit: UnitState) -> Bool { unit.status == .completed && unit.compensation == nil }

    /// A step is settled when nothing of it is left to undo, and everything that depends on it is settled.
    func settledSteps() -> [Bool] {
        var settled = Array(repeating: false, count: steps.count)
        for s in workflow.topologicalOrder.reversed() {
            let own = steps[s].compensation == nil || !policy.compensate
                || state.steps[s].units.allSatisfy { $0.status != .completed || $0.compensation == .done || $0.compensation == .skipped }
            settled[s] = own && workflow.dependents[s].allSatisfy { settled[$0] }
        }
        return settled
    }

    var compensationsSettled: Bool {
        !policy.compensate || settledSteps().allSatisfy { $0 }
    }

    mutating func startCompensations() {
        let settled = settledSteps()
        var ready: [(seq: Int, s: Int, u: Int)] = []
        for s in steps.indices where steps[s].compensation != nil {
            guard workflow.dependents[s].allSatisfy({ settled[$0] }) else { continue }
            for u in state.steps[s].units.indices where needsCompensation(state.steps[s].units[u]) {
                ready.append((state.steps[s].units[u].completedSeq ?? 0, s, u))
            }
        }
        for (_, s, u) in ready.sorted(by: { $0.seq > $1.seq }) {
            state.steps[s].units[u].compensationAttempt = max(state.steps[s].units[u].compensationAttempt, state.steps[s].compensationAttemptBase)
            dispatchCompensation(s, u)
        }
    }

    func compensationTimeout(_ s: Int) -> Millis { steps[s].compensation?.timeout ?? steps[s].effectiveTimeout }

    mutating func dispatchCompensation(_ s: Int, _ u: Int) {
        guard let compensation = steps[s].compensation else { return }
        state.steps[s].units[u].compensationAttempt += 1
        state.steps[s].units[u].compensation = .running
        let attempt = state.steps[s].units[u].compensationAttempt
        let item = itemIndex(s, u)
        var ctx = context(for: s, item: item)
        let ownOutput = state.steps[s].units[u].output ?? .null
        let stepID = steps[s].id
        let others = ctx.stepOutput
        ctx.stepOutput = { $0 == stepID ? ownOutput : others($0) }
        let input = compensation.input.map { InputTemplate.render($0, in: ctx) } ?? .object(["output": ownOutput, "input": renderInput(s, item: item)])
        let timeout = compensationTimeout(s).value
        effects.append(
            .compensate(
                StepCommand(
                    instanceID: state.instanceID, workflowID: workflow.id, workflowVersion: workflow.version, step: steps[s].id, type: compensation.type,
                    pool: compensation.pool, item: item, attempt: attempt, input: input, deadline: now + timeout,
                    idempotencyKey: idempotencyKey(s, item: item, compensation: true), isCompensation: true, heartbeatTimeout: nil)))
        arm(TimerKey(kind: .compensationTimeout, step: s, item: item, attempt: attempt), at: now + timeout)
    }

    // MARK: Helpers

    func itemIndex(_ s: Int, _ u: Int) -> Int? { steps[s].forEach != nil ? u : nil }

    func taskID(_ s: Int, attempt: Int) -> String { HumanTask.id(instanceID: state.instanceID, step: steps[s].id, attempt: attempt) }

    func idempotencyKey(_ s: Int, item: Int?, compensation: Bool) -> String {
        var key = "\(state.instanceID)/\(steps[s].id)"
        if let item { key += "/\(item)" }
        if compensation { key += "/compensation" }
        return key
    }

    // MARK: Events and signals

    /// A record a `wait_for_event` attempt waited for: the step completes with the record's value as its output.
    mutating func receive(step: String, attempt: Int, event: EventRecord) -> IgnoredReason? {
        let (s, u): (Int, Int)
        switch locate(step: step, item: nil, attempt: attempt) {
        case .failure(let reason): return reason
        case .success(let found): (s, u) = found
        }
        guard steps[s].isEventWait else { return .notApplicable("'\(step)' is not a wait_for_event step") }
        guard state.steps[s].units[u].status == .running else {
            return .stale("attempt \(attempt) of '\(step)' is \(state.steps[s].units[u].status.rawValue), no longer waiting")
        }
        endAttempt(s, u, unsubscribe: false)
        finishUnit(s, u, output: event.value)
        return nil
    }

    /// A signal: recorded for conditions and templates; a `signal` step waiting for it completes with its data.
    mutating func receiveSignal(name: String, data: JSON) -> IgnoredReason? {
        guard workflow.definition.signalNames.contains(name) else {
            let known = workflow.definition.signalNames.sorted()
            let hint = closestMatch(to: name, among: known).map { " (did you mean '\($0)'?)" } ?? ""
            return .unknown("\(workflow.id) v\(workflow.version) has no signal '\(name)'\(hint); it accepts \(known.isEmpty ? "none" : known.joined(separator: ", "))")
        }
        state.signals = (state.signals ?? [:]).merging([name: data]) { _, new in new }
        for s in steps.indices where steps[s].signal == name && state.steps[s].units.first?.status == .running {
            endAttempt(s, 0)
            finishUnit(s, 0, output: data)
        }
        return nil
    }

    /// The subscription of a `wait_for_event` step's attempt (`since`: when it starts waiting; nil when only its
    /// identity matters, to unsubscribe), or nil when the instance has no value to wait for.
    func subscription(_ s: Int, attempt: Int, since: Timestamp?) -> EventSubscription? {
        guard let event = steps[s].event else { return nil }
        let value = (try? ValuePath(parsing: event.equals))?.resolve(in: context(for: s))  // checked at validation: parses
        guard let text = Mailbox.correlationText(value) else { return nil }
        let started = since ?? now
        let timeout = steps[s].effectiveTimeout
        return EventSubscription(
            mailbox: Mailbox.key(topic: event.topic, correlate: event.correlate, value: text), instanceID: state.instanceID, workflowID: workflow.id,
            step: steps[s].id, attempt: attempt, since: started, ttl: event.ttl ?? timeout, until: started + timeout.value, broadcast: event.broadcast)
    }

    /// Paths resolve against the instance's input and the outputs of the steps this one reads.
    func context(for s: Int, item: Int? = nil) -> PathContext {
        var outputs: [String: JSON] = [:]
        for r in workflow.reads[s] { outputs[steps[r].id] = state.steps[r].output }
        let items = state.steps[s].items
        let frozen = outputs
        return PathContext(
            instanceID: state.instanceID, workflowID: workflow.id, input: state.input,
            item: item.flatMap { i in items.flatMap { i < $0.count ? $0[i] : nil } }, index: item, signals: state.signals,
            stepOutput: { frozen[$0] ?? nil })
    }

    func renderInput(_ s: Int, item: Int?) -> JSON {
        let ctx = context(for: s, item: item)
        if let template = steps[s].input { return InputTemplate.render(template, in: ctx) }
        if item != nil { return ctx.item ?? .null }
        return state.input
    }

    mutating func arm(_ key: TimerKey, at dueAt: Timestamp) {
        state.timers.removeAll { $0.key == key }
        state.timers.append(ArmedTimer(key: key, dueAt: dueAt))
        effects.append(.armTimer(key, at: dueAt))
    }

    mutating func disarm(_ key: TimerKey) {
        guard let i = state.timers.firstIndex(where: { $0.key == key }) else { return }
        state.timers.remove(at: i)
        effects.append(.cancelTimer(key))
    }
}

/// The state snapshot's JSON (format version 1), written and read by hand: the same text as the `Codable`
/// conformances write (keys in sorted order, defaults left out where they leave them out), in a fraction of
/// the time. `StateCodec` uses these and falls back to `JSONDecoder` for anything they do not read.

extension InstanceState {
    /// Writes the state; without `outputs`, what `withoutOutputs.write(to:)` writes, without copying the state.
    public func write(to w: inout JSONTextWriter, outputs: Bool = true) {
        w.beginObject()
        w.key("cancelRequested"); w.bool(cancelRequested)
        w.key("completionCounter"); w.int(completionCounter)
        if let deadline { w.key("deadline"); w.int64(deadline) }
        if let failedStep { w.key("failedStep"); w.string(failedStep) }
        if let finishedAt { w.key("finishedAt"); w.int64(finishedAt) }
        w.key("generation"); w.int(generation)
        w.key("input"); w.value(input)
        w.key("instanceID"); w.string(instanceID)
        if let output { w.key("output"); w.value(output) }
        if let reason { w.key("reason"); w.string(reason) }
        w.key("requests"); w.strings(requests)
        if let signals { w.key("signals"); w.value(.object(signals)) }
        if let startRequest { w.key("startRequest"); w.string(startRequest) }
        w.key("startedAt"); w.int64(startedAt)
        w.key("status"); w.string(status.rawValue)
        w.key("steps")
        w.beginArray()
        for step in steps { step.write(to: &w, outputs: outputs) }
        w.endArray()
        if let suspension { w.key("suspension"); w.string(suspension.rawValue) }
        w.key("timers")
        w.beginArray()
        for timer in timers { timer.write(to: &w) }
        w.endArray()
        if let trace { w.key("trace"); w.object(trace) }
        w.key("version"); w.int(version)
        w.key("workflowID"); w.string(workflowID)
        w.endObject()
    }

    /// Reads what `write(to:)` writes; every field the synthesized `Decodable` requires must be there.
    public init(reading r: inout JSONTextReader) throws {
        var instanceID: String?, workflowID: String?, version: Int?, status: InstanceStatus?, input: JSON?, startedAt: Int64?
        var steps: [StepState]?, timers: [ArmedTimer]?, completionCounter: Int?, cancelRequested: Bool?, requests: [String]?, generation: Int?
        var finishedAt: Int64?, deadline: Int64?, reason: String?, failedStep: String?, suspension: SuspensionReason?, output: JSON?
        var startRequest: String?, trace: [String: String]?, signals: [String: JSON]?
        try r.object { key, r in
            switch key {
            case "cancelRequested": cancelRequested = try r.bool()
            case "completionCounter": completionCounter = try r.int()
            case "deadline": deadline = try r.null() ? nil : r.int64()
            case "failedStep": failedStep = try r.null() ? nil : r.string()
            case "finishedAt": finishedAt = try r.null() ? nil : r.int64()
            case "generation": generation = try r.int()
            case "input": input = try r.value()
            case "instanceID": instanceID = try r.string()
            case "output": output = try r.optionalValue()
            case "reason": reason = try r.null() ? nil : r.string()
            case "requests": requests = try r.strings()
            case "signals":
                switch try r.optionalValue() {
                case nil, .null?: signals = nil
                case .object(let o)?: signals = o
                default: throw JSONTextError("signals are not an object", at: 0)
                }
            case "startRequest": startRequest = try r.null() ? nil : r.string()
            case "startedAt": startedAt = try r.int64()
            case "status": status = try InstanceStatus(rawValue: r.string())
            case "steps":
                var list: [StepState] = []
                try r.array { list.append(try StepState(reading: &$0)) }
                steps = list
            case "suspension": suspension = try r.null() ? nil : SuspensionReason(rawValue: r.string()).orThrow("suspension")
            case "timers":
                var list: [ArmedTimer] = []
                try r.array { list.append(try ArmedTimer(reading: &$0)) }
                timers = list
            case "trace": trace = try r.null() ? nil : r.stringObject()
            case "version": version = try r.int()
            case "workflowID": workflowID = try r.string()
            default: try r.skip()
            }
        }
        guard let instanceID, let workflowID, let version, let status, let input, let startedAt, let steps, let timers, let completionCounter,
            let cancelRequested, let requests, let generation
        else { throw JSONTextError("a field of the instance state is missing or unknown", at: 0) }
        self.init(instanceID: instanceID, workflowID: workflowID, version: version, status: status, input: input, startedAt: startedAt, steps: steps)
        self.finishedAt = finishedAt
        self.deadline = deadline
        self.timers = timers
        self.completionCounter = completionCounter
        self.reason = reason
        self.failedStep = failedStep
        self.suspension = suspension
        self.cancelRequested = cancelRequested
        self.output = output
        self.requests = requests
        self.generation = generation
        self.startRequest = startRequest
        self.trace = trace
        self.signals = signals
    }
}

extension Optional {
    /// The value, or an error naming `field` (for an enum's raw value the reader did not know).
    func orThrow(_ field: String) throws -> Wrapped {
        guard let self else { throw JSONTextError("unknown value of '\(field)'", at: 0) }
        return self
    }
}

extension StepState {
    public func write(to w: inout JSONTextWriter, outputs: Bool = true) {
        w.beginObject()
        if attemptBase != 0 { w.key("ab"); w.int(attemptBase) }
        if compensationAttemptBase != 0 { w.key("cb"); w.int(compensationAttemptBase) }
        if let error { w.key("e"); w.string(error) }
        if let items {
            w.key("i")
            w.beginArray()
            for item in items { w.value(item) }
            w.endArray()
        }
        // A plain step's output is its single unit's: stored once (compared only when outputs are written).
        if outputs, let output, !(items == nil && status == .completed && units.count == 1 && units[0].output == output) {
            w.key("o")
            w.value(output)
        }
        if let completedSeq { w.key("q"); w.int(completedSeq) }
        if status != .pending { w.key("s"); w.string(status.rawValue) }
        if let startedAt { w.key("t0"); w.int64(startedAt) }
        if let finishedAt { w.key("t1"); w.int64(finishedAt) }
        if !units.isEmpty {
            w.key("u")
            w.beginArray()
            for unit in units { unit.write(to: &w, outputs: outputs) }
            w.endArray()
        }
        if escalated { w.key("x"); w.bool(escalated) }
        w.endObject()
    }

    public init(reading r: inout JSONTextReader) throws {
        self.init()
        var output: JSON?
        try r.object { key, r in
            switch key {
            case "ab": attemptBase = try r.null() ? 0 : r.int()
            case "cb": compensationAttemptBase = try r.null() ? 0 : r.int()
            case "e": error = try r.null() ? nil : r.string()
            case "i":
                if try r.null() {
                    items = nil
                } else {
                    var list: [JSON] = []
                    try r.array { list.append(try $0.value()) }
                    items = list
                }
            case "o": output = try r.optionalValue()
            case "q": completedSeq = try r.null() ? nil : r.int()
            case "s": status = try r.null() ? .pending : StepStatus(rawValue: r.string()).orThrow("s")
            case "t0": startedAt = try r.null() ? nil : r.int64()
            case "t1": finishedAt = try r.null() ? nil : r.int64()
            case "u":
                var list: [UnitState] = []
                if !(try r.null()) { try r.array { list.append(try UnitState(reading: &$0)) } }
                units = list
            case "x": escalated = try r.null() ? false : r.bool()
            default: try r.skip()
            }
        }
        // A plain step's output is its single unit's; it is stored once.
        self.output = output ?? (items == nil && status == .completed ? units.first?.output : nil)
    }
}

extension UnitState {
    public func write(to w: inout JSONTextWriter, outputs: Bool = true) {
        w.beginObject()
        if attempt != 0 { w.key("a"); w.int(attempt) }
        if let compensation { w.key("c"); w.string(compensation.rawValue) }
        if compensationAttempt != 0 { w.key("ca"); w.int(compensationAttempt) }
        if let compensationError { w.key("ce"); w.string(compensationError) }
        if let compensatedSeq { w.key("cq"); w.int(compensatedSeq) }
        if let error { w.key("e"); w.string(error) }
        if let heartbeatAt { w.key("h"); w.int64(heartbeatAt) }
        if outputs, let output { w.key("o"); w.value(output) }
        if let progress { w.key("p"); w.value(progress) }
        if let completedSeq { w.key("q"); w.int(completedSeq) }
        if status != .pending { w.key("s"); w.string(status.rawValue) }
        if let task { w.key("t"); task.write(to: &w) }
        w.endObject()
    }

    public init(reading r: inout JSONTextReader) throws {
        self.init()
        try r.object { key, r in
            switch key {
            case "a": attempt = try r.null() ? 0 : r.int()
            case "c": compensation = try r.null() ? nil : CompensationStatus(rawValue: r.string()).orThrow("c")
            case "ca": compensationAttempt = try r.null() ? 0 : r.int()
            case "ce": compensationError = try r.null() ? nil : r.string()
            case "cq": compensatedSeq = try r.null() ? nil : r.int()
            case "e": error = try r.null() ? nil : r.string()
            case "h": heartbeatAt = try r.null() ? nil : r.int64()
            case "o": output = try r.optionalValue()
            case "p": progress = try r.optionalValue()
            case "q": completedSeq = try r.null() ? nil : r.int()
            case "s": status = try r.null() ? .pending : UnitStatus(rawValue: r.string()).orThrow("s")
            case "t": task = try r.null() ? nil : HumanTask(reading: &r)
            default: try r.skip()
            }
        }
    }
}

extension ArmedTimer {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("dueAt"); w.int64(dueAt)
        w.key("key"); key.write(to: &w)
        w.endObject()
    }

    public init(reading r: inout JSONTextReader) throws {
        var dueAt: Int64?, key: TimerKey?
        try r.object { k, r in
            switch k {
            case "dueAt": dueAt = try r.int64()
            case "key": key = try TimerKey(reading: &r)
            default: try r.skip()
            }
        }
        guard let dueAt, let key else { throw JSONTextError("a field of a timer is missing", at: 0) }
        self.init(key: key, dueAt: dueAt)
    }
}

extension TimerKey {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("attempt"); w.int(attempt)
        if let item { w.key("item"); w.int(item) }
        w.key("kind"); w.string(kind.rawValue)
        if let step { w.key("step"); w.int(step) }
        w.endObject()
    }

    public init(reading r: inout JSONTextReader) throws {
        var kind: TimerKind?, step: Int?, item: Int?, attempt: Int?
        try r.object { k, r in
            switch k {
            case "attempt": attempt = try r.int()
            case "item": item = try r.null() ? nil : r.int()
            case "kind": kind = try TimerKind(rawValue: r.string()).orThrow("kind")
            case "step": step = try r.null() ? nil : r.int()
            default: try r.skip()
            }
        }
        guard let kind, let attempt else { throw JSONTextError("a field of a timer key is missing", at: 0) }
        self.init(kind: kind, step: step, item: item, attempt: attempt)
    }
}

extension HumanTask {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("assignee"); w.string(assignee)
        w.key("attempt"); w.int(attempt)
        if let claimedBy { w.key("claimed_by"); w.string(claimedBy) }
        w.key("created_at"); w.int64(createdAt)
        w.key("due_at"); w.int64(dueAt)
        w.key("history")
        w.beginArray()
        for entry in history { entry.write(to: &w) }
        w.endArray()
        w.key("input"); w.value(input)
        w.key("instance_id"); w.string(instanceID)
        w.key("step"); w.string(step)
        w.key("task_id"); w.string(taskID)
        w.key("title"); w.string(title)
        w.key("workflow_id"); w.string(workflowID)
        w.endObject()
    }

    /// Reads the current field names only (records written before 0.2 are left to `JSONDecoder`).
    public init(reading r: inout JSONTextReader) throws {
        var taskID: String?, instanceID: String?, workflowID: String?, step: String?, attempt: Int?, assignee: String?, title: String?
        var input: JSON = .null, createdAt: Int64?, dueAt: Int64?, claimedBy: String?, history: [TaskActivity] = []
        try r.object { k, r in
            switch k {
            case "assignee": assignee = try r.string()
            case "attempt": attempt = try r.int()
            case "claimed_by": claimedBy = try r.null() ? nil : r.string()
            case "created_at": createdAt = try r.int64()
            case "due_at": dueAt = try r.int64()
            case "history":
                var list: [TaskActivity] = []
                if !(try r.null()) { try r.array { list.append(try TaskActivity(reading: &$0)) } }
                history = list
            case "input": input = try r.value()
            case "instance_id": instanceID = try r.string()
            case "step": step = try r.string()
            case "task_id": taskID = try r.string()
            case "title": title = try r.string()
            case "workflow_id": workflowID = try r.string()
            default: try r.skip()
            }
        }
        guard let taskID, let instanceID, let workflowID, let step, let attempt, let assignee, let title, let createdAt, let dueAt else {
            throw JSONTextError("a field of a task is missing", at: 0)
        }
        self.init(
            taskID: taskID, instanceID: instanceID, workflowID: workflowID, step: step, attempt: attempt, assignee: assignee, title: title,
            input: input, createdAt: createdAt, dueAt: dueAt, claimedBy: claimedBy, history: history)
    }
}

extension TaskActivity {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("action"); w.string(action.rawValue)
        w.key("at"); w.int64(at)
        if let by { w.key("by"); w.string(by) }
        if let comment { w.key("comment"); w.string(comment) }
        if let request { w.key("request_id"); w.string(request) }
        if let to { w.key("to"); w.string(to) }
        w.endObject()
    }

    public init(reading r: inout JSONTextReader) throws {
        var action: Action?, at: Int64?, by: String?, to: String?, comment: String?, request: String?
        try r.object { k, r in
            switch k {
            case "action": action = try Action(rawValue: r.string()).orThrow("action")
            case "at": at = try r.int64()
            case "by": by = try r.null() ? nil : r.string()
            case "comment": comment = try r.null() ? nil : r.string()
            case "request_id": request = try r.null() ? nil : r.string()
            case "to": to = try r.null() ? nil : r.string()
            default: try r.skip()
            }
        }
        guard let action, let at else { throw JSONTextError("a field of a task's history is missing", at: 0) }
        self.init(action, at: at, by: by, to: to, comment: comment, request: request)
    }
}

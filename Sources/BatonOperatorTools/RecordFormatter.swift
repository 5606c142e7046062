import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Foundation

/// An engine topic that `baton tail` reads.
public enum TailTopic: Sendable, Hashable, CustomStringConvertible {
    case events
    /// A worker pool's command topic.
    case commands(pool: String)
    case state
    case outputs
    case tasks
    case alerts
    case notifications
    case definitions
    case deadletter

    /// The names `baton tail` takes (`commands` with a pool after it).
    public static let names = ["events", "commands", "state", "outputs", "tasks", "alerts", "notifications", "definitions", "deadletter"]

    /// The topic named `name` (and, for `commands`, `pool`), or why there is none.
    public static func named(_ name: String, pool: String?) throws(ClientError) -> TailTopic {
        let topic: TailTopic
        switch name {
        case "events": topic = .events
        case "commands":
            guard let pool, !pool.isEmpty else { throw ClientError(.invalid, "`commands` needs a worker pool: baton tail commands POOL (its topic is <namespace>.commands.POOL)") }
            return .commands(pool: pool)
        case "state": topic = .state
        case "outputs": topic = .outputs
        case "tasks": topic = .tasks
        case "alerts": topic = .alerts
        case "notifications": topic = .notifications
        case "definitions": topic = .definitions
        case "deadletter": topic = .deadletter
        default: throw ClientError(.invalid, "no engine topic '\(name)'; known: \(names.joined(separator: ", "))")
        }
        if let pool { throw ClientError(.invalid, "only `commands` takes a pool; `\(name)` was given '\(pool)'") }
        return topic
    }

    public func name(in names: TopicNames) -> String {
        switch self {
        case .events: names.events
        case .commands(let pool): names.commands(pool)
        case .state: names.state
        case .outputs: names.outputs
        case .tasks: names.tasks
        case .alerts: names.alerts
        case .notifications: names.notifications
        case .definitions: names.definitions
        case .deadletter: names.deadletter
        }
    }

    public var description: String {
        switch self {
        case .events: "events"
        case .commands(let pool): "commands \(pool)"
        case .state: "state"
        case .outputs: "outputs"
        case .tasks: "tasks"
        case .alerts: "alerts"
        case .notifications: "notifications"
        case .definitions: "definitions"
        case .deadletter: "deadletter"
        }
    }
}

/// One record of an engine topic, decoded for people: where and when it was written, what it is, which instance
/// it is about, and its meaningful fields in a fixed order. `baton tail` prints it as one line (`line`) or one
/// JSON object (`json`).
public struct TailRecord: Sendable, Hashable {
    public struct Field: Sendable, Hashable {
        public var name: String
        public var value: JSON
        /// How a line shows it, when not as `value` (a JSON value cut short is shown as JSON text, not a string).
        public var text: String?
        public init(_ name: String, _ value: JSON, text: String? = nil) {
            self.name = name
            self.value = value
            self.text = text
        }
    }

    public var topic: String
    public var partition: Int32
    public var offset: Int64
    /// The record's timestamp, milliseconds since the epoch (nil when it has none).
    public var timestamp: Int64?
    public var key: String?
    /// The wire kind (`step.completed`), `state`, `tombstone` (a null value), or `undecodable`.
    public var kind: String
    public var instanceID: String?
    /// The meaningful fields of the kind, in the order a person reads them.
    public var fields: [Field]
    /// Why the record could not be decoded (then `kind` is `undecodable`).
    public var undecodable: String?
    /// The record's value as JSON (a state snapshot without its two header bytes); a value that is not JSON is
    /// a string of its text.
    public var record: JSON?

    public subscript(field: String) -> JSON? { fields.first { $0.name == field }?.value }
}

/// Decodes engine records for people (`baton tail`): every kind of every topic of docs/wire-protocol.md. A record
/// it cannot decode becomes a `TailRecord` of kind `undecodable` with the reason, never an error.
public struct RecordFormatter: Sendable {
    /// Outputs, inputs and documents longer than this are cut in a line (their size is given; `--json` has them whole).
    public var shortLength: Int

    public init(shortLength: Int = 80) { self.shortLength = shortLength }

    /// The record read from `topic`.
    public func decode(_ m: KafkaMessage, from topic: TailTopic) -> TailRecord {
        var r = TailRecord(
            topic: m.topic, partition: m.partition, offset: m.offset, timestamp: m.timestamp, key: m.keyString, kind: "", instanceID: nil, fields: [],
            undecodable: nil, record: nil)
        guard let value = m.value else {
            r.kind = "tombstone"
            // Keyed by instance id, or by `<instance>/<step>#<item>` (outputs) and `<instance>/<step>/<attempt>` (tasks).
            switch topic {
            case .state, .events, .alerts, .notifications, .commands: r.instanceID = r.key
            case .outputs, .tasks: r.instanceID = r.key?.split(separator: "/").first.map(String.init)
            case .definitions, .deadletter: break
            }
            return r
        }
        r.record = Self.json(value, snapshot: topic == .state)
        do {
            switch topic {
            case .events: try describeEvent(value, into: &r)
            case .commands: try describeCommand(value, into: &r)
            case .state: try describeState(value, message: m, into: &r)
            case .outputs: try describeOutput(value, message: m, into: &r)
            case .tasks: try describeTask(value, into: &r)
            case .alerts: try describeAlert(value, into: &r)
            case .notifications: try describeNotification(value, into: &r)
            case .definitions: try describeDefinition(value, into: &r)
            case .deadletter: describeDeadLetter(value, message: m, into: &r)
            }
        } catch {
            r.kind = "undecodable"
            r.fields = []
            r.instanceID = r.instanceID ?? (topic == .definitions || topic == .deadletter ? nil : r.key)
            r.undecodable = error.reason
            if let kind = m.header(WireHeaders.kind) { r.fields.append(.init("header_kind", .string(String(decoding: kind, as: UTF8.self)))) }
            r.fields.append(.init("size", .number(Double(value.count))))
        }
        return r
    }

    // MARK: Kinds

    func describeEvent(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        let kind = try Wire.kind(of: value)
        r.kind = kind.rawValue
        // Checked exactly as a coordinator checks it: what it would refuse is shown as undecodable, with its reason.
        let message = try EventMessage.decode(value)
        r.instanceID = message.instanceID
        switch message {
        case .start(let s):
            r.fields = [.init("workflow_id", .string(s.workflowID))]
            if let version = s.version { r.fields.append(.init("version", .number(Double(version)))) }
            r.fields.append(short("input", s.input))
            if let request = s.requestID { r.fields.append(.init("request_id", .string(request))) }
        case .event(_, let event):
            r.fields = Self.fields(of: event, short: short)
        case .mailbox(_, let event):
            switch event {
            case .publish(let record), .returned(let record):
                r.fields = [.init("record", .string(record.id)), short("value", record.value), .init("expires_at", .string(Self.time(record.expiresAt)))]
            case .subscribe(let s), .unsubscribe(let s):
                r.fields = [.init("for", .string(s.instanceID)), .init("step", .string(s.step)), .init("attempt", .number(Double(s.attempt)))]
                if case .subscribe = event { r.fields += [.init("until", .string(Self.time(s.until))), .init("broadcast", .bool(s.broadcast))] }
            case .expire:
                r.fields = [.init("timer", "mailbox")]
            }
        }
    }

    static func fields(of event: SagaEvent, short: (String, JSON) -> TailRecord.Field) -> [TailRecord.Field] {
        func unit(_ step: String, _ item: Int?, _ attempt: Int) -> [TailRecord.Field] {
            var f: [TailRecord.Field] = [.init("step", .string(step))]
            if let item { f.append(.init("item", .number(Double(item)))) }
            f.append(.init("attempt", .number(Double(attempt))))
            return f
        }
        switch event {
        case .stepCompleted(let step, let item, let attempt, let output):
            return unit(step, item, attempt) + [short("output", output), .init("output_bytes", .number(Double(output.encoded().count)))]
        case .stepFailed(let step, let item, let attempt, let error, let retryable):
            return unit(step, item, attempt) + [.init("error", .string(error)), .init("retryable", .bool(retryable))]
        case .compensationCompleted(let step, let item, let attempt):
            return unit(step, item, attempt)
        case .compensationFailed(let step, let item, let attempt, let error):
            return unit(step, item, attempt) + [.init("error", .string(error))]
        case .heartbeat(let step, let item, let attempt, let details):
            return unit(step, item, attempt) + (details.map { [short("details", $0)] } ?? [])
        case .taskDecided(let step, let attempt, let approved, let by, let comment, let data, let request, let override):
            var f = unit(step, nil, attempt) + [.init("approved", .bool(approved)), .init("by", .string(by))]
            if let comment { f.append(.init("comment", .string(comment))) }
            if let data { f.append(short("data", data)) }
            if let request { f.append(.init("request_id", .string(request))) }
            if override { f.append(.init("override", true)) }
            return f
        case .taskClaimed(let step, let attempt, let claimant, let by, let request, let override):
            var f = unit(step, nil, attempt) + [.init("claimant", claimant.map(JSON.string) ?? .null), .init("by", .string(by))]
            if let request { f.append(.init("request_id", .string(request))) }
            if override { f.append(.init("override", true)) }
            return f
        case .timerFired(let timer, _):
            return [.init("timer", .string(timer.kind.rawValue))]
                + (timer.step.map { [.init("step_index", .number(Double($0)))] } ?? [])
                + (timer.item.map { [.init("item", .number(Double($0)))] } ?? [])
                + [.init("attempt", .number(Double(timer.attempt)))]
        case .cancel(let reason, let by, let request):
            return [.init("command", "cancel"), .init("reason", .string(reason)), .init("by", .string(by)), .init("request_id", .string(request))]
        case .resume(let by, let request):
            return [.init("command", "resume"), .init("by", .string(by)), .init("request_id", .string(request))]
        case .retry(let step, let by, let request):
            return [.init("command", "retry")] + (step.map { [.init("step", .string($0))] } ?? []) + [.init("by", .string(by)), .init("request_id", .string(request))]
        case .skip(let step, let output, let by, let request):
            return [.init("command", "skip"), .init("step", .string(step))] + (output.map { [short("output", $0)] } ?? [])
                + [.init("by", .string(by)), .init("request_id", .string(request))]
        case .eventReceived(let step, let attempt, let mailbox, let record):
            return unit(step, nil, attempt) + [.init("record", .string(record.id)), .init("mailbox", .string(mailbox)), short("value", record.value)]
        case .signal(let name, let data, let by, let request):
            return [.init("name", .string(name)), short("data", data)] + (by.map { [.init("by", .string($0))] } ?? []) + [.init("request_id", .string(request))]
        }
    }

    func describeCommand(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        let kind = try Wire.kind(of: value)
        guard kind == .stepCommand || kind == .compensationCommand else {
            throw Wire.DecodeError("a '\(kind.rawValue)' record does not belong on a command topic")
        }
        let c = try Wire.decode(CommandMessage.self, from: value)
        r.kind = kind.rawValue
        r.instanceID = c.instanceID
        r.fields = [.init("workflow_id", .string(c.workflowID)), .init("version", .number(Double(c.workflowVersion))), .init("step", .string(c.step))]
        if let item = c.item { r.fields.append(.init("item", .number(Double(item)))) }
        r.fields += [
            .init("attempt", .number(Double(c.attempt))), .init("pool", .string(c.pool)), short("input", c.input),
        ]
        // A step's run timeout counts from the worker's start; `start_by` appears only with a queue timeout. A
        // compensation's deadline is when the coordinator stops waiting for it.
        if let timeout = c.timeout { r.fields.append(.init("timeout_ms", .number(Double(timeout)))) }
        if c.deadline < StepCommand.noDeadline {
            r.fields.append(.init(c.kind == .stepCommand ? "start_by" : "deadline", .string(Self.time(c.deadline))))
        }
        r.fields.append(.init("reply_to", .string("\(c.replyTo.topic)[\(c.replyTo.partition)]")))
        if let heartbeat = c.heartbeatTimeout { r.fields.append(.init("heartbeat_timeout_ms", .number(Double(heartbeat)))) }
    }

    func describeState(_ value: Data, message m: KafkaMessage, into r: inout TailRecord) throws(Wire.DecodeError) {
        let state: InstanceState
        do { state = try StateCodec.decode(value) } catch { throw Wire.DecodeError(error.reason) }
        r.kind = "state"
        r.instanceID = state.instanceID
        r.fields = [
            .init("workflow_id", .string(state.workflowID)), .init("version", .number(Double(state.version))), .init("status", .string(state.status.rawValue)),
        ]
        let done = state.steps.filter { $0.status == .completed || $0.status == .skipped }.count
        r.fields.append(.init("steps", .string("\(done)/\(state.steps.count) done")))
        let running = state.steps.indices.filter { state.steps[$0].units.contains { $0.status == .running } }
        // Steps by position (`#1` is the first): the snapshot does not name them; `baton status` does.
        if !running.isEmpty { r.fields.append(.init("running", .string(running.map { "#\($0 + 1)" }.joined(separator: ",")))) }
        if let reason = state.reason { r.fields.append(.init("reason", .string(reason))) }
        if let step = state.failedStep { r.fields.append(.init("failed_step", .string(step))) }
        if let finished = state.finishedAt { r.fields.append(.init("took_ms", .number(Double(finished - state.startedAt)))) }
        if let offset = m.header(WireHeaders.eventsOffset) { r.fields.append(.init("events_offset", .string(String(decoding: offset, as: UTF8.self)))) }
        if let writer = m.header(WireHeaders.coordinator) { r.fields.append(.init("coordinator", .string(String(decoding: writer, as: UTF8.self)))) }
    }

    func describeOutput(_ value: Data, message m: KafkaMessage, into r: inout TailRecord) throws(Wire.DecodeError) {
        try expect(.output, value)
        let o = try Wire.decode(OutputRecord.self, from: value)
        r.kind = Wire.Kind.output.rawValue
        r.instanceID = o.instanceID
        r.fields = [.init("step", .string(o.step))]
        if let item = o.item { r.fields.append(.init("item", .number(Double(item)))) }
        r.fields += [.init("attempt", .number(Double(o.attempt))), short("output", o.output), .init("output_bytes", .number(Double(o.output.encoded().count)))]
    }

    func describeTask(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        try expect(.task, value)
        let t = try Wire.decode(TaskRecord.self, from: value)
        r.kind = Wire.Kind.task.rawValue
        r.instanceID = t.task?.instanceID ?? t.taskID.split(separator: "/").first.map(String.init)
        r.fields = [.init("task_id", .string(t.taskID)), .init("status", .string(t.status.rawValue))]
        if let task = t.task {
            r.fields += [.init("step", .string(task.step)), .init("attempt", .number(Double(task.attempt))), .init("assignee", .string(task.assignee))]
            if let holder = task.claimedBy { r.fields.append(.init("claimed_by", .string(holder))) }
            if let last = task.history.last { r.fields.append(.init("last", .string(last.action.rawValue + (last.by.map { " by \($0)" } ?? "")))) }
        }
        if let by = t.decidedBy { r.fields.append(.init("decided_by", .string(by))) }
        r.fields.append(.init("partition", .number(Double(t.partition))))
    }

    func describeAlert(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        try expect(.alert, value)
        let a = try Wire.decode(AlertRecord.self, from: value)
        r.kind = Wire.Kind.alert.rawValue
        r.instanceID = a.alert.instanceID
        r.fields = [.init("severity", .string(a.alert.severity.rawValue))]
        if let workflow = a.alert.workflowID { r.fields.append(.init("workflow_id", .string(workflow))) }
        if let step = a.alert.step { r.fields.append(.init("step", .string(step))) }
        if let partition = a.alert.partition { r.fields.append(.init("events_partition", .number(Double(partition)))) }
        r.fields.append(.init("message", .string(a.alert.message)))
    }

    func describeNotification(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        try expect(.notification, value)
        let n = try Wire.decode(NotificationRecord.self, from: value)
        r.kind = Wire.Kind.notification.rawValue
        r.instanceID = n.notification.instanceID
        r.fields = [.init("recipient", .string(n.notification.recipient)), .init("subject", .string(n.notification.subject))]
        if let task = n.notification.taskID { r.fields.append(.init("task_id", .string(task))) }
    }

    func describeDefinition(_ value: Data, into r: inout TailRecord) throws(Wire.DecodeError) {
        try expect(.definition, value)
        let d = try Wire.decode(DefinitionRecord.self, from: value)
        r.kind = Wire.Kind.definition.rawValue
        r.fields = [
            .init("workflow_id", .string(d.workflowID)), .init("version", .number(Double(d.version))),
            .init("document_bytes", .number(Double(d.document.utf8.count))), .init("registered_at", .string(Self.time(d.registeredAt))),
        ]
    }

    /// A dead letter is always shown: why it was refused, where it came from, and what it was (when that can be read).
    func describeDeadLetter(_ value: Data, message m: KafkaMessage, into r: inout TailRecord) {
        func header(_ name: String) -> String? { m.header(name).map { String(decoding: $0, as: UTF8.self) } }
        r.kind = "deadletter"
        r.fields = [.init("reason", header(WireHeaders.deadLetterReason).map(JSON.string) ?? .null)]
        if let code = header(WireHeaders.deadLetterCode) { r.fields.append(.init("code", .string(code))) }
        if let topic = header(WireHeaders.deadLetterTopic) {
            let origin = "\(topic)[\(header(WireHeaders.deadLetterPartition) ?? "?")]@\(header(WireHeaders.deadLetterOffset) ?? "?")"
            r.fields.append(.init("origin", .string(origin)))
        }
        // What the refused record was: its `kind` if it has one (it may be what was wrong with it), else its header's.
        // (`try?`: a refused record need not be JSON at all; then only its header can say.)
        let peek = try? JSONDecoder().decode(Peek.self, from: value)
        if let kind = peek?.kind ?? header(WireHeaders.kind) {
            r.fields.append(.init("original_kind", .string(kind)))
        }
        // Dead letters keep the refused record's key: an instance id for every topic keyed by one.
        if let id = peek?.instanceID ?? r.key { r.instanceID = id }
        r.fields.append(.init("size", .number(Double(header(WireHeaders.deadLetterSize).flatMap(Int.init) ?? value.count))))
    }

    /// What a refused record says it is, when it is a JSON object.
    struct Peek: Decodable {
        var kind: String?
        var instanceID: String?
        enum CodingKeys: String, CodingKey { case kind, instanceID = "instance_id" }
    }

    func expect(_ kind: Wire.Kind, _ value: Data) throws(Wire.DecodeError) {
        let found = try Wire.kind(of: value)
        guard found == kind else { throw Wire.DecodeError("a '\(found.rawValue)' record does not belong here (expected '\(kind.rawValue)')") }
    }

    // MARK: Presentation

    /// A field of a JSON value: as it is when short, else its first `shortLength` characters of JSON text, marked
    /// as cut (a string in `--json`, whose `record` has it whole).
    public func short(_ name: String, _ value: JSON) -> TailRecord.Field {
        switch value {
        case .null, .bool, .number: return .init(name, value)
        default:
            let text = value.jsonText
            guard text.count > shortLength else { return .init(name, value) }
            let cut = String(text.prefix(shortLength)) + "..."
            return .init(name, .string(cut), text: cut)
        }
    }

    /// A value as JSON: a state snapshot without its two header bytes; text that is not JSON as a string.
    static func json(_ value: Data, snapshot: Bool) -> JSON {
        let body = snapshot && value.count >= 2 && value[value.startIndex] == StateCodec.magic ? value.dropFirst(2) : value
        do { return try JSON.parse(Data(body)) } catch { return .string(String(decoding: body.prefix(Wire.maxDeadLetterBytes), as: UTF8.self)) }
    }

    /// ISO 8601 in UTC with milliseconds, as 2026-11-25T10:00:00.123Z.
    public static func time(_ millis: Int64) -> String {
        // Whole seconds through the formatter, milliseconds by hand: a Double of epoch milliseconds is not exact.
        let (seconds, ms) = (millis.flooredDivision(by: 1000), millis.flooredModulo(1000))
        let text = Date(timeIntervalSince1970: Double(seconds)).formatted(Date.ISO8601FormatStyle())
        let digits = String(ms)
        return text.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// One line: time, partition@offset, kind, instance id, then `name=value` for each field (strings with spaces
    /// or quotes in JSON quotes); an undecodable record says why.
    public func line(_ r: TailRecord) -> String {
        var parts = [r.timestamp.map(Self.time) ?? "-", "\(r.partition)@\(r.offset)", r.kind, r.instanceID ?? r.key ?? "-"]
        if let reason = r.undecodable { parts.append("reason=\(Self.text(.string(reason)))") }
        parts += r.fields.map { "\($0.name)=\($0.text ?? Self.text($0.value))" }
        return parts.joined(separator: "  ")
    }

    static func text(_ value: JSON) -> String {
        switch value {
        case .string(let s):
            let plain = !s.isEmpty && !s.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline || $0 == "\\" }
            return plain ? s : JSON.string(s).jsonText
        default: return value.jsonText
        }
    }

    /// One JSON object: `time`, `timestamp`, `topic`, `partition`, `offset`, `key`, `kind`, `instance_id`, every
    /// field, `undecodable` (the reason) when it could not be decoded, and `record`: the whole decoded value.
    public func json(_ r: TailRecord) -> JSON {
        var object: [String: JSON] = [:]
        for field in r.fields { object[field.name] = field.value }
        object["time"] = r.timestamp.map { .string(Self.time($0)) } ?? .null
        object["timestamp"] = r.timestamp.map { .number(Double($0)) } ?? .null
        object["topic"] = .string(r.topic)
        object["partition"] = .number(Double(r.partition))
        object["offset"] = .number(Double(r.offset))
        object["key"] = r.key.map(JSON.string) ?? .null
        object["kind"] = .string(r.kind)
        object["instance_id"] = r.instanceID.map(JSON.string) ?? .null
        if let reason = r.undecodable { object["undecodable"] = .string(reason) }
        object["record"] = r.record ?? .null
        return .object(object)
    }

    public func jsonLine(_ r: TailRecord) -> String { json(r).jsonText }
}

extension Int64 {
    /// Division rounding down (toward minus infinity), so that times before 1970 still have 0 to 999 milliseconds.
    func flooredDivision(by d: Int64) -> Int64 { (self - flooredModulo(d)) / d }
    func flooredModulo(_ d: Int64) -> Int64 { ((self % d) + d) % d }
}

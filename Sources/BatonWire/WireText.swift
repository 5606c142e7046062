import BatonCore
import Foundation

/// The hot path's records written and read by hand (`JSONTextWriter`, `JSONTextReader`): commands, results,
/// outputs, starts, timers and task records. The text is the `Codable` conformances' byte for byte (the property
/// tests compare them); a record the readers do not take goes through `JSONDecoder` as before, which decides
/// whether it is accepted and what the error says.
public protocol WireWritable {
    func write(to w: inout JSONTextWriter)
}

extension Wire {
    /// A record's value, written by hand.
    public static func encode<T: WireWritable & Encodable>(_ value: T) -> Data { written(value) }

    static func written(_ value: some WireWritable) -> Data {
        var writer = JSONTextWriter(capacity: 512)
        value.write(to: &writer)
        return writer.data
    }

    /// Reads a record with the hand-written reader; nil when it does not take it.
    static func fast<T>(_ data: Data, _ read: (inout JSONTextReader) throws -> T) -> T? {
        // Dropped on purpose: the caller reads the record again with JSONDecoder, which gives the error.
        try? JSONTextReader.read(data, read)
    }
}

extension ReplyTo {
    func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("partition"); w.int64(Int64(partition))
        w.key("topic"); w.string(topic)
        w.endObject()
    }
}

extension CommandMessage: WireWritable {
    init(
        kind: Wire.Kind, instanceID: String, workflowID: String, workflowVersion: Int, step: String, type: String, pool: String, item: Int?,
        attempt: Int, input: JSON, deadline: Int64, idempotencyKey: String, replyTo: ReplyTo, heartbeatTimeout: Int64?, token: String?,
        timeout: Int64? = nil
    ) {
        self.kind = kind
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.workflowVersion = workflowVersion
        self.step = step
        self.type = type
        self.pool = pool
        self.item = item
        self.attempt = attempt
        self.input = input
        self.deadline = deadline
        self.idempotencyKey = idempotencyKey
        self.replyTo = replyTo
        self.heartbeatTimeout = heartbeatTimeout
        self.token = token
        self.timeout = timeout
    }

    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("attempt"); w.int(attempt)
        w.key("deadline"); w.int64(deadline)
        if let heartbeatTimeout { w.key("heartbeat_timeout"); w.int64(heartbeatTimeout) }
        w.key("idempotency_key"); w.string(idempotencyKey)
        w.key("input"); w.value(input)
        w.key("instance_id"); w.string(instanceID)
        if let item { w.key("item"); w.int(item) }
        w.key("kind"); w.string(kind.rawValue)
        w.key("pool"); w.string(pool)
        w.key("reply_to"); replyTo.write(to: &w)
        w.key("step"); w.string(step)
        if let timeout { w.key("timeout"); w.int64(timeout) }
        if let token { w.key("token"); w.string(token) }
        w.key("type"); w.string(type)
        w.key("v"); w.int(v)
        w.key("workflow_id"); w.string(workflowID)
        w.key("workflow_version"); w.int(workflowVersion)
        w.endObject()
    }

    /// A command record, read by hand when it is well formed; nil sends it to `JSONDecoder`.
    public static func fastDecode(_ data: Data) -> CommandMessage? {
        Wire.fast(data) { r in
            var v: Int?, kind: Wire.Kind?, instanceID: String?, workflowID: String?, workflowVersion: Int?, step: String?, type: String?
            var pool: String?, item: Int?, attempt: Int?, input: JSON?, deadline: Int64?, idempotencyKey: String?, heartbeatTimeout: Int64?, timeout: Int64?
            var topic: String?, partition: Int32?, token: String?
            try r.object { key, r in
                switch key {
                case "attempt": attempt = try r.int()
                case "deadline": deadline = try r.int64()
                case "heartbeat_timeout": heartbeatTimeout = try r.null() ? nil : r.int64()
                case "idempotency_key": idempotencyKey = try r.string()
                case "input": input = try r.value()
                case "instance_id": instanceID = try r.string()
                case "item": item = try r.null() ? nil : r.int()
                case "kind": kind = Wire.Kind(rawValue: try r.string())
                case "pool": pool = try r.string()
                case "reply_to":
                    try r.object { key, r in
                        switch key {
                        case "partition":
                            let p = try r.int64()
                            guard let p32 = Int32(exactly: p) else { throw JSONTextError("partition out of range", at: 0) }
                            partition = p32
                        case "topic": topic = try r.string()
                        default: try r.skip()
                        }
                    }
                case "step": step = try r.string()
                case "timeout": timeout = try r.null() ? nil : r.int64()
                case "token": token = try r.null() ? nil : r.string()
                case "type": type = try r.string()
                case "v": v = try r.int()
                case "workflow_id": workflowID = try r.string()
                case "workflow_version": workflowVersion = try r.int()
                default: try r.skip()
                }
            }
            guard v == Wire.version, let kind, kind == .stepCommand || kind == .compensationCommand, let instanceID, let workflowID,
                let workflowVersion, let step, let type, let pool, let attempt, let input, let deadline, let idempotencyKey, let topic, let partition
            else { throw JSONTextError("not a command the fast reader takes", at: 0) }
            return CommandMessage(
                kind: kind, instanceID: instanceID, workflowID: workflowID, workflowVersion: workflowVersion, step: step, type: type, pool: pool,
                item: item, attempt: attempt, input: input, deadline: deadline, idempotencyKey: idempotencyKey,
                replyTo: ReplyTo(topic: topic, partition: partition), heartbeatTimeout: heartbeatTimeout, token: token, timeout: timeout)
        }
    }
}

extension ResultMessage: WireWritable {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("attempt"); w.int(attempt)
        if let error { w.key("error"); w.string(error) }
        if let idempotencyKey { w.key("idempotency_key"); w.string(idempotencyKey) }
        w.key("instance_id"); w.string(instanceID)
        if let item { w.key("item"); w.int(item) }
        w.key("kind"); w.string(kind.rawValue)
        if let output { w.key("output"); w.value(output) }
        if let retryable { w.key("retryable"); w.bool(retryable) }
        w.key("step"); w.string(step)
        if let token { w.key("token"); w.string(token) }
        w.key("v"); w.int(v)
        w.endObject()
    }
}

extension StartMessage: WireWritable {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("input"); w.value(input)
        w.key("instance_id"); w.string(instanceID)
        w.key("kind"); w.string(kind.rawValue)
        if let requestID { w.key("request_id"); w.string(requestID) }
        if let sentAt { w.key("sent_at"); w.int64(sentAt) }
        w.key("v"); w.int(v)
        if let version { w.key("version"); w.int(version) }
        w.key("workflow_id"); w.string(workflowID)
        w.endObject()
    }
}

extension TimerMessage: WireWritable {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("due_at"); w.int64(dueAt)
        w.key("instance_id"); w.string(instanceID)
        w.key("kind"); w.string(kind.rawValue)
        w.key("timer"); timer.write(to: &w)
        w.key("v"); w.int(v)
        w.endObject()
    }
}

extension OutputRecord: WireWritable {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("attempt"); w.int(attempt)
        w.key("instance_id"); w.string(instanceID)
        if let item { w.key("item"); w.int(item) }
        w.key("kind"); w.string(kind.rawValue)
        w.key("output"); w.value(output)
        w.key("step"); w.string(step)
        w.key("v"); w.int(v)
        w.endObject()
    }

    /// An output record read by hand (a rebuild reads every output of its partitions); nil: use `JSONDecoder`.
    public static func fastDecode(_ data: Data) -> OutputRecord? {
        Wire.fast(data) { r in
            var v: Int?, kind: Wire.Kind?, instanceID: String?, step: String?, item: Int?, attempt: Int?, output: JSON?
            try r.object { key, r in
                switch key {
                case "attempt": attempt = try r.int()
                case "instance_id": instanceID = try r.string()
                case "item": item = try r.null() ? nil : r.int()
                case "kind": kind = Wire.Kind(rawValue: try r.string())
                case "output": output = try r.value()
                case "step": step = try r.string()
                case "v": v = try r.int()
                default: try r.skip()
                }
            }
            guard v == Wire.version, kind == .output, let instanceID, let step, let attempt, let output else {
                throw JSONTextError("not an output the fast reader takes", at: 0)
            }
            return OutputRecord(instanceID: instanceID, step: step, item: item, attempt: attempt, output: output)
        }
    }
}

extension TaskRecord: WireWritable {
    public func write(to w: inout JSONTextWriter) {
        w.beginObject()
        w.key("at"); w.int64(at)
        if let decidedBy { w.key("decided_by"); w.string(decidedBy) }
        w.key("kind"); w.string(kind.rawValue)
        w.key("partition"); w.int64(Int64(partition))
        w.key("status"); w.string(status.rawValue)
        if let task { w.key("task"); task.write(to: &w) }
        w.key("task_id"); w.string(taskID)
        w.key("v"); w.int(v)
        w.endObject()
    }
}

extension EventMessage {
    /// The events the engine sees most (starts, results, timers), read by hand in one pass; nil for anything
    /// else or anything unusual, which `decode` then reads with `JSONDecoder` (and refuses with its reason).
    static func fastDecode(_ data: Data) -> (Wire.Kind, StartMessage?, ResultMessage?, TimerMessage?)? {
        Wire.fast(data) { r in
            var v: Int?, kind: Wire.Kind?, instanceID: String?, workflowID: String?, version: Int?, input: JSON?, sentAt: Int64?
            var requestID: String?, step: String?, item: Int?, attempt: Int?, output: JSON?, error: String?, retryable: Bool?
            var idempotencyKey: String?, timer: TimerKey?, dueAt: Int64?, token: String?
            try r.object { key, r in
                switch key {
                case "v": v = try r.int()
                case "kind": kind = Wire.Kind(rawValue: try r.string())
                case "instance_id": instanceID = try r.string()
                case "workflow_id": workflowID = try r.string()
                case "version": version = try r.null() ? nil : r.int()
                case "input": input = try r.value()
                case "sent_at": sentAt = try r.null() ? nil : r.int64()
                case "request_id": requestID = try r.null() ? nil : r.string()
                case "step": step = try r.string()
                case "item": item = try r.null() ? nil : r.int()
                case "attempt": attempt = try r.int()
                case "output": output = try r.optionalValue()
                case "error": error = try r.null() ? nil : r.string()
                case "retryable": retryable = try r.null() ? nil : r.bool()
                case "idempotency_key": idempotencyKey = try r.null() ? nil : r.string()
                case "token": token = try r.null() ? nil : r.string()
                case "timer": timer = try TimerKey(reading: &r)
                case "due_at": dueAt = try r.int64()
                default: try r.skip()
                }
            }
            guard v == Wire.version, let kind, let instanceID else { throw JSONTextError("not an event the fast reader takes", at: 0) }
            switch kind {
            case .start:
                guard let workflowID, let input else { throw JSONTextError("incomplete start", at: 0) }
                return (kind, StartMessage(instanceID: instanceID, workflowID: workflowID, version: version, input: input, sentAt: sentAt, requestID: requestID), nil, nil)
            case .stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed:
                guard let step, let attempt else { throw JSONTextError("incomplete result", at: 0) }
                let m = ResultMessage(
                    kind: kind, instanceID: instanceID, step: step, item: item, attempt: attempt, output: output, error: error, retryable: retryable,
                    idempotencyKey: idempotencyKey, token: token)
                return (kind, nil, m, nil)
            case .timerFired:
                guard let timer, let dueAt else { throw JSONTextError("incomplete timer", at: 0) }
                return (kind, nil, nil, TimerMessage(instanceID: instanceID, timer: timer, dueAt: dueAt))
            default: throw JSONTextError("left to JSONDecoder", at: 0)
            }
        }
    }
}

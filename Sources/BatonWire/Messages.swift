import BatonCore
import Foundation

/// Version 1 of the wire protocol. Every record value is a JSON object with `v` (this version) and `kind`;
/// docs/wire-protocol.md describes each kind. Readers reject an unknown `v` and ignore unknown fields.
public enum Wire {
    public static let version = 1

    public enum Kind: String, Sendable, Codable, CaseIterable {
        // On the events topic (keyed by instance id):
        case start
        case stepCompleted = "step.completed"
        case stepFailed = "step.failed"
        case compensationCompleted = "compensation.completed"
        case compensationFailed = "compensation.failed"
        case taskDecided = "task.decided"
        case taskClaimed = "task.claimed"
        case stepHeartbeat = "step.heartbeat"
        case operatorCommand = "operator"
        case timerFired = "timer.fired"
        case signal
        case eventPublished = "event.published"
        case eventReturned = "event.returned"
        case eventSubscribed = "event.subscribed"
        case eventUnsubscribed = "event.unsubscribed"
        case eventReceived = "event.received"
        // On command topics:
        case stepCommand = "step.command"
        case compensationCommand = "compensation.command"
        // On the definitions, tasks, alerts and notifications topics:
        case definition
        case task
        case alert
        case notification
        // On the outputs topic (keyed by instance id, step and item):
        case output
        case mailbox
    }

    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public var reason: String
        public init(_ reason: String) { self.reason = reason }
        public var description: String { reason }
    }

    /// The largest record value the engine reads; larger ones go to the dead-letter topic.
    public static let maxRecordBytes = 1 << 20
    /// The largest step result the engine accepts: a larger output fails the step (it would swell the state).
    public static let maxResultBytes = 256 << 10
    /// The largest workflow input a start may carry (it is kept in the instance's state snapshot).
    public static let maxInputBytes = 256 << 10
    /// Error texts and heartbeat details longer than this are cut (they are kept in the state snapshot).
    public static let maxErrorBytes = 4 << 10
    public static let maxProgressBytes = 4 << 10
    /// How much of a refused record the dead-letter topic keeps (the header `baton-dlq-size` gives its size).
    public static let maxDeadLetterBytes = 512 << 10

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func encode<T: Encodable>(_ value: T) -> Data {
        if let writable = value as? any WireWritable { return written(writable) }
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    struct Header: Decodable {
        var v: Int?
        var kind: String?
    }

    /// Reads `v` and `kind`, refusing what is not a version-1 Baton record.
    public static func kind(of data: Data) throws(DecodeError) -> Kind {
        guard data.count <= maxRecordBytes else { throw DecodeError("the record is \(data.count) bytes, more than the limit of \(maxRecordBytes)") }
        if let depth = nestingDepthExceeded(data) { throw DecodeError("nested more than \(DocumentLimits.maxNesting) levels deep (\(depth))") }
        let header: Header
        do { header = try JSONDecoder().decode(Header.self, from: data) } catch {
            throw DecodeError("not a JSON object: \(describe(error))")
        }
        guard let v = header.v else { throw DecodeError("field 'v' (the protocol version) is missing") }
        guard v == version else { throw DecodeError("protocol version \(v) is not supported (this build reads \(version))") }
        guard let raw = header.kind else { throw DecodeError("field 'kind' is missing") }
        guard let kind = Kind(rawValue: raw) else {
            throw DecodeError("unknown kind '\(raw)'; known: \(Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return kind
    }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws(DecodeError) -> T {
        do { return try JSONDecoder().decode(type, from: data) } catch {
            throw DecodeError("wrong schema for \(T.self): \(describe(error))")
        }
    }

    static func nestingDepthExceeded(_ data: Data) -> Int? {
        var depth = 0
        var inString = false
        var escaped = false
        for byte in data {
            if inString {
                if escaped { escaped = false } else if byte == 0x5C { escaped = true } else if byte == 0x22 { inString = false }
                continue
            }
            switch byte {
            case 0x22: inString = true
            case 0x5B, 0x7B:
                depth += 1
                if depth > DocumentLimits.maxNesting { return depth }
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
        return nil
    }

    /// `text` cut to at most `limit` bytes of UTF-8 (on a character boundary), marked when cut.
    public static func cut(_ text: String, to limit: Int) -> String {
        guard text.utf8.count > limit else { return text }
        var out = ""
        var used = 0
        for c in text {
            let n = c.utf8.count
            if used + n > limit - 20 { break }
            out.append(c)
            used += n
        }
        return out + " ... (\(text.utf8.count) bytes, cut)"
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "field '\((context.codingPath + [key]).map(\.stringValue).joined(separator: "."))' is missing"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "field '\(context.codingPath.map(\.stringValue).joined(separator: "."))': \(context.debugDescription)"
        case DecodingError.dataCorrupted(let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? "invalid JSON" : "field '\(path)': \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }
}

/// Start an instance. A start for an instance id that exists already with the same workflow and input (and no
/// version, or the one it runs) is a duplicate and changes nothing, so a client may resend it; one that asks
/// for something else is refused (dead-lettered as a conflict). The instance's state names the start that
/// created it (`request_id`).
public struct StartMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.start
    public var instanceID: String
    public var workflowID: String
    /// Nil: the latest registered version.
    public var version: Int?
    public var input: JSON
    /// Milliseconds since the epoch, when the client sent it.
    public var sentAt: Int64?
    /// Unique per start request: the instance's state says which request created it.
    public var requestID: String?

    public init(instanceID: String, workflowID: String, version: Int?, input: JSON, sentAt: Int64?, requestID: String? = nil) {
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.version = version
        self.input = input
        self.sentAt = sentAt
        self.requestID = requestID
    }

    enum CodingKeys: String, CodingKey {
        case v, kind, instanceID = "instance_id", workflowID = "workflow_id", version, input, sentAt = "sent_at", requestID = "request_id"
    }
}

/// Where a worker sends its result: the events topic and the instance's partition.
public struct ReplyTo: Codable, Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }
}

/// A command to a worker pool: run a step (or undo it).
public struct CommandMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind: Wire.Kind
    public var instanceID: String
    public var workflowID: String
    public var workflowVersion: Int
    public var step: String
    public var type: String
    public var pool: String
    public var item: Int?
    public var attempt: Int
    public var input: JSON
    /// A step's command: until when (milliseconds since the epoch) a worker may start the attempt; past it the
    /// worker drops the command unrun (the coordinator has retried it). `StepCommand.noDeadline` (9999-12-31)
    /// when the step has no `queue_timeout`. A compensation's: when the coordinator stops waiting for it.
    public var deadline: Int64
    public var idempotencyKey: String
    public var replyTo: ReplyTo
    /// Milliseconds: while it runs the attempt, the worker must send a `step.heartbeat` at least this often.
    public var heartbeatTimeout: Int64?
    /// The attempt's result token (opaque ASCII, at most 64 bytes): the coordinator computes it per
    /// attempt, and the worker echoes it unchanged in the attempt's result and heartbeats (docs/wire-protocol.md).
    /// Nil from a coordinator of the release before tokens; then the answers carry none either.
    public var token: String?
    /// Milliseconds: how long the attempt may run once the worker started it (its start report). Nil for a
    /// compensation, and from a coordinator of a release before it.
    public var timeout: Int64?

    public init(_ command: StepCommand, replyTo: ReplyTo, token: String? = nil) {
        kind = command.isCompensation ? .compensationCommand : .stepCommand
        instanceID = command.instanceID
        workflowID = command.workflowID
        workflowVersion = command.workflowVersion
        step = command.step
        type = command.type
        pool = command.pool
        item = command.item
        attempt = command.attempt
        input = command.input
        deadline = command.deadline
        idempotencyKey = command.idempotencyKey
        self.replyTo = replyTo
        heartbeatTimeout = command.heartbeatTimeout?.value
        self.token = token
        timeout = command.timeout?.value
    }

    public var isCompensation: Bool { kind == .compensationCommand }

    enum CodingKeys: String, CodingKey {
        case v, kind, instanceID = "instance_id", workflowID = "workflow_id", workflowVersion = "workflow_version", step, type, pool, item
        case attempt, input, deadline, idempotencyKey = "idempotency_key", replyTo = "reply_to", heartbeatTimeout = "heartbeat_timeout", token, timeout
    }
}

/// A worker's sign of life on a long attempt (to the command's `reply_to`, keyed by instance id): it restarts
/// the step's heartbeat timeout; `details` (at most 4 KiB of JSON) is kept as the attempt's progress.
public struct HeartbeatMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.stepHeartbeat
    public var instanceID: String
    public var step: String
    public var item: Int?
    public var attempt: Int
    public var details: JSON?
    /// The command's token, echoed (nil when the command had none).
    public var token: String?

    public init(_ command: CommandMessage, details: JSON?) {
        instanceID = command.instanceID
        step = command.step
        item = command.item
        attempt = command.attempt
        self.details = details
        token = command.token
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", step, item, attempt, details, token }
}

/// A worker's answer to a command (step or compensation; completed or failed).
public struct ResultMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind: Wire.Kind
    public var instanceID: String
    public var step: String
    public var item: Int?
    public var attempt: Int
    public var output: JSON?
    public var error: String?
    /// For `step.failed`: false when trying again cannot help (a declined card). Default true.
    public var retryable: Bool?
    public var idempotencyKey: String?
    /// The command's token, echoed unchanged (nil when the command had none).
    public var token: String?

    public init(
        kind: Wire.Kind, instanceID: String, step: String, item: Int?, attempt: Int, output: JSON? = nil, error: String? = nil, retryable: Bool? = nil,
        idempotencyKey: String?, token: String? = nil
    ) {
        self.kind = kind
        self.instanceID = instanceID
        self.step = step
        self.item = item
        self.attempt = attempt
        self.output = output
        self.error = error
        self.retryable = retryable
        self.idempotencyKey = idempotencyKey
        self.token = token
    }

    /// The answer to a command.
    public static func completed(_ command: CommandMessage, output: JSON) -> ResultMessage {
        ResultMessage(
            kind: command.isCompensation ? .compensationCompleted : .stepCompleted, instanceID: command.instanceID, step: command.step,
            item: command.item, attempt: command.attempt, output: command.isCompensation ? nil : output, idempotencyKey: command.idempotencyKey,
            token: command.token)
    }

    public static func failed(_ command: CommandMessage, error: String, retryable: Bool) -> ResultMessage {
        ResultMessage(
            kind: command.isCompensation ? .compensationFailed : .stepFailed, instanceID: command.instanceID, step: command.step,
            item: command.item, attempt: command.attempt, error: error, retryable: command.isCompensation ? nil : retryable,
            idempotencyKey: command.idempotencyKey, token: command.token)
    }

    enum CodingKeys: String, CodingKey {
        case v, kind, instanceID = "instance_id", step, item, attempt, output, error, retryable, idempotencyKey = "idempotency_key", token
    }
}

/// A person's decision on a human task.
public struct DecisionMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.taskDecided
    public var instanceID: String
    public var taskID: String?
    public var step: String
    public var attempt: Int
    public var approved: Bool
    public var by: String
    public var comment: String?
    /// Joins the step's output as `data`.
    public var data: JSON?
    /// Unique per request: the task's history names the request that decided it.
    public var requestID: String?
    /// Decide although another person claimed the task (an admin's decision).
    public var override: Bool?
    /// The signature that proves who decides (see `AuthorityProof`); a decision without a valid one is refused.
    public var auth: AuthorityProof?

    public init(
        instanceID: String, taskID: String?, step: String, attempt: Int, approved: Bool, by: String, comment: String?, data: JSON? = nil,
        requestID: String? = nil, override: Bool? = nil
    ) {
        self.instanceID = instanceID
        self.taskID = taskID
        self.step = step
        self.attempt = attempt
        self.approved = approved
        self.by = by
        self.comment = comment
        self.data = data
        self.requestID = requestID
        self.override = override
    }

    enum CodingKeys: String, CodingKey {
        case v, kind, instanceID = "instance_id", taskID = "task_id", step, attempt, approved, by, comment, data, requestID = "request_id", override, auth
    }
}

/// A person claims an open task (`claimant`: who it is claimed for), or gives it back (`claimant` null).
public struct ClaimMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.taskClaimed
    public var instanceID: String
    public var taskID: String?
    public var step: String
    public var attempt: Int
    public var claimant: String?
    public var by: String
    public var requestID: String?
    /// Take the task from whoever holds it (an admin assigning it).
    public var override: Bool?
    /// The signature that proves who claims (see `AuthorityProof`).
    public var auth: AuthorityProof?

    public init(
        instanceID: String, taskID: String?, step: String, attempt: Int, claimant: String?, by: String, requestID: String?, override: Bool? = nil
    ) {
        self.instanceID = instanceID
        self.taskID = taskID
        self.step = step
        self.attempt = attempt
        self.claimant = claimant
        self.by = by
        self.requestID = requestID
        self.override = override
    }

    enum CodingKeys: String, CodingKey {
        case v, kind, instanceID = "instance_id", taskID = "task_id", step, attempt, claimant, by, requestID = "request_id", override, auth
    }
}

/// An operator's command on an instance.
public struct OperatorMessage: Codable, Sendable, Hashable {
    public enum Command: String, Codable, Sendable, CaseIterable { case cancel, resume, retry, skip }
    public var v = Wire.version
    public var kind = Wire.Kind.operatorCommand
    public var instanceID: String
    public var command: Command
    public var step: String?
    public var output: JSON?
    public var reason: String?
    public var by: String
    /// Unique per request: a request delivered twice is applied once.
    public var requestID: String
    /// The signature that proves which operator acts (see `AuthorityProof`).
    public var auth: AuthorityProof?

    public init(instanceID: String, command: Command, step: String? = nil, output: JSON? = nil, reason: String? = nil, by: String, requestID: String) {
        self.instanceID = instanceID
        self.command = command
        self.step = step
        self.output = output
        self.reason = reason
        self.by = by
        self.requestID = requestID
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", command, step, output, reason, by, requestID = "request_id", auth }
}

/// A durable timer that came due, sent by the coordinator to the instance's events partition and applied
/// like any other event (a duplicate finds the timer disarmed and changes nothing).
public struct TimerMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.timerFired
    public var instanceID: String
    public var timer: TimerKey
    public var dueAt: Int64

    public init(instanceID: String, timer: TimerKey, dueAt: Int64) {
        self.instanceID = instanceID
        self.timer = timer
        self.dueAt = dueAt
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", timer, dueAt = "due_at" }
}

/// A signal for an instance (`baton signal ID NAME --data JSON`): on `events`, keyed and partitioned by the
/// instance id.
public struct SignalMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.signal
    public var instanceID: String
    public var name: String
    /// Null or absent: `true`.
    public var data: JSON?
    /// The person who sends it; absent for a service's signal. A signal that names a person must be signed.
    public var by: String?
    /// Unique per request: a signal sent twice with the same one counts once.
    public var requestID: String
    public var sentAt: Int64?
    /// The signature that proves who sends it, when it names a person (see `AuthorityProof`).
    public var auth: AuthorityProof?

    public init(instanceID: String, name: String, data: JSON?, by: String?, requestID: String, sentAt: Int64?) {
        self.instanceID = instanceID
        self.name = name
        self.data = data
        self.by = by
        self.requestID = requestID
        self.sentAt = sentAt
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", name, data, by, requestID = "request_id", sentAt = "sent_at", auth }
}

/// A record from a business topic for a mailbox (`event.published`, from `baton triggers`), or one given back by
/// an instance that could not take it (`event.returned`, from a coordinator). On `events`, keyed by the mailbox.
public struct MailboxRecordMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind: Wire.Kind
    public var mailbox: String
    public var event: EventRecord

    public init(kind: Wire.Kind = .eventPublished, mailbox: String, event: EventRecord) {
        self.kind = kind
        self.mailbox = mailbox
        self.event = event
    }
}

/// A `wait_for_event` attempt starts (`event.subscribed`) or stops (`event.unsubscribed`) waiting. Coordinators
/// write them to the mailbox's partition of `events`, keyed by the mailbox.
public struct SubscriptionMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind: Wire.Kind
    public var subscription: EventSubscription

    public init(kind: Wire.Kind, subscription: EventSubscription) {
        self.kind = kind
        self.subscription = subscription
    }
}

/// A mailbox delivers a record to a waiting attempt: on the instance's partition of `events`, keyed by its id.
public struct EventReceivedMessage: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.eventReceived
    public var instanceID: String
    public var step: String
    public var attempt: Int
    public var mailbox: String
    public var event: EventRecord

    public init(instanceID: String, step: String, attempt: Int, mailbox: String, event: EventRecord) {
        self.instanceID = instanceID
        self.step = step
        self.attempt = attempt
        self.mailbox = mailbox
        self.event = event
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", step, attempt, mailbox, event }
}

/// A mailbox as a coordinator keeps it on `<ns>.mailboxes` (keyed by the mailbox; a tombstone once empty).
public struct MailboxSnapshot: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.mailbox
    public var mailbox: Mailbox

    public init(mailbox: Mailbox) { self.mailbox = mailbox }
}

/// An events-topic record decoded, with what it carries to prove who sent it.
public struct DecodedEvent: Sendable {
    public var message: EventMessage
    public var credentials: Credentials

    public init(_ message: EventMessage, _ credentials: Credentials = .none) {
        self.message = message
        self.credentials = credentials
    }
}

/// What a record carries to prove who sent it.
public enum Credentials: Sendable {
    /// Nothing: a start, a timer, a mailbox's record, a service's signal.
    case none
    /// A result or heartbeat: the token of its command, echoed (nil: none was sent).
    case token(String?)
    /// A decision, claim, operator action or a person's signal: checked with `TrustedKeys.verify`.
    case authority(any AuthorityRecord)
}

/// What arrives on the events topic, decoded.
public enum EventMessage: Sendable, Hashable {
    case start(StartMessage)
    case event(instanceID: String, SagaEvent)
    /// For a mailbox (its key in place of an instance id).
    case mailbox(key: String, MailboxEvent)

    public var instanceID: String {
        switch self {
        case .start(let s): s.instanceID
        case .event(let id, _): id
        case .mailbox(let key, _): key
        }
    }

    /// Decodes an events-topic record, or says exactly what is wrong with it (`decodeRecord`, without what
    /// proves its sender).
    public static func decode(_ data: Data) throws(Wire.DecodeError) -> EventMessage { try decodeRecord(data).message }

    /// Decodes an events-topic record with what it carries to prove who sent it, or says exactly what is wrong
    /// with it. Starts, results and timers are read by hand in one pass when they are well formed; everything
    /// else, and anything they refuse, is read with `JSONDecoder`, which accepts it or gives the reason.
    public static func decodeRecord(_ data: Data) throws(Wire.DecodeError) -> DecodedEvent {
        if data.count <= Wire.maxRecordBytes, let (kind, start, result, timer) = fastDecode(data) {
            if let start { return DecodedEvent(try validated(start)) }
            if let result { return DecodedEvent(try validated(result, kind: kind, size: data.count), .token(result.token)) }
            if let timer { return DecodedEvent(timerEvent(timer)) }
        }
        let kind = try Wire.kind(of: data)
        switch kind {
        case .start:
            return DecodedEvent(try validated(Wire.decode(StartMessage.self, from: data)))
        case .stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed:
            let m = try Wire.decode(ResultMessage.self, from: data)
            return DecodedEvent(try validated(m, kind: kind, size: data.count), .token(m.token))
        case .taskDecided:
            let m = try Wire.decode(DecisionMessage.self, from: data)
            try checkAttempt(m.attempt)
            if let data = m.data, data.encodedSize > Wire.maxResultBytes {
                throw Wire.DecodeError("field 'data' is \(data.encodedSize) bytes, more than the limit of \(Wire.maxResultBytes)")
            }
            return DecodedEvent(.event(
                instanceID: m.instanceID,
                .taskDecided(
                    step: m.step, attempt: m.attempt, approved: m.approved, by: m.by, comment: m.comment, data: m.data, request: m.requestID,
                    override: m.override ?? false)), .authority(m))
        case .taskClaimed:
            let m = try Wire.decode(ClaimMessage.self, from: data)
            try checkAttempt(m.attempt)
            return DecodedEvent(
                .event(
                    instanceID: m.instanceID,
                    .taskClaimed(step: m.step, attempt: m.attempt, claimant: m.claimant, by: m.by, request: m.requestID, override: m.override ?? false)),
                .authority(m))
        case .stepHeartbeat:
            let m = try Wire.decode(HeartbeatMessage.self, from: data)
            try checkAttempt(m.attempt)
            if let details = m.details, details.encodedSize > Wire.maxProgressBytes {
                throw Wire.DecodeError("field 'details' is \(details.encodedSize) bytes, more than the limit of \(Wire.maxProgressBytes)")
            }
            return DecodedEvent(.event(instanceID: m.instanceID, .heartbeat(step: m.step, item: m.item, attempt: m.attempt, details: m.details)), .token(m.token))
        case .operatorCommand:
            let m = try Wire.decode(OperatorMessage.self, from: data)
            let event: SagaEvent
            switch m.command {
            case .cancel: event = .cancel(reason: m.reason ?? "cancelled", by: m.by, request: m.requestID)
            case .resume: event = .resume(by: m.by, request: m.requestID)
            case .retry: event = .retry(step: m.step, by: m.by, request: m.requestID)
            case .skip:
                guard let step = m.step else { throw Wire.DecodeError("skip needs a step") }
                event = .skip(step: step, output: m.output, by: m.by, request: m.requestID)
            }
            return DecodedEvent(.event(instanceID: m.instanceID, event), .authority(m))
        case .timerFired:
            return DecodedEvent(timerEvent(try Wire.decode(TimerMessage.self, from: data)))
        case .signal:
            let m = try Wire.decode(SignalMessage.self, from: data)
            guard !m.name.isEmpty else { throw Wire.DecodeError("field 'name' must not be empty") }
            guard !m.requestID.isEmpty else { throw Wire.DecodeError("field 'request_id' must not be empty") }
            let payload = m.data ?? .bool(true)
            if payload.encodedSize > Wire.maxResultBytes {
                throw Wire.DecodeError("field 'data' is \(payload.encodedSize) bytes, more than the limit of \(Wire.maxResultBytes)")
            }
            // A service's signal names nobody and needs no signature; one that names a person (or is signed) must verify.
            let event = EventMessage.event(instanceID: m.instanceID, .signal(name: m.name, data: payload, by: m.by, request: m.requestID))
            return DecodedEvent(event, m.by == nil && m.auth == nil ? .none : .authority(m))
        case .eventPublished, .eventReturned:
            let m = try Wire.decode(MailboxRecordMessage.self, from: data)
            try checkMailbox(m.mailbox)
            return DecodedEvent(.mailbox(key: m.mailbox, kind == .eventPublished ? .publish(m.event) : .returned(m.event)))
        case .eventSubscribed, .eventUnsubscribed:
            let m = try Wire.decode(SubscriptionMessage.self, from: data)
            try checkMailbox(m.subscription.mailbox)
            try checkAttempt(m.subscription.attempt)
            return DecodedEvent(.mailbox(key: m.subscription.mailbox, kind == .eventSubscribed ? .subscribe(m.subscription) : .unsubscribe(m.subscription)))
        case .eventReceived:
            let m = try Wire.decode(EventReceivedMessage.self, from: data)
            try checkAttempt(m.attempt)
            return DecodedEvent(.event(instanceID: m.instanceID, .eventReceived(step: m.step, attempt: m.attempt, mailbox: m.mailbox, event: m.event)))
        default:
            throw Wire.DecodeError("a '\(kind.rawValue)' record does not belong on the events topic")
        }
    }

    static func validated(_ m: StartMessage) throws(Wire.DecodeError) -> EventMessage {
        try InstanceID.check(m.instanceID, field: "instance_id")
        guard !m.workflowID.isEmpty else { throw Wire.DecodeError("field 'workflow_id' must not be empty") }
        let inputBytes = m.input.encodedSize
        guard inputBytes <= Wire.maxInputBytes else {
            throw Wire.DecodeError("the input is \(inputBytes) bytes, more than the limit of \(Wire.maxInputBytes)")
        }
        return .start(m)
    }

    static func validated(_ message: ResultMessage, kind: Wire.Kind, size: Int) throws(Wire.DecodeError) -> EventMessage {
        var m = message
        try checkAttempt(m.attempt)
        m.error = m.error.map { Wire.cut($0, to: Wire.maxErrorBytes) }
        if kind == .stepCompleted, size > Wire.maxResultBytes {
            let error = "the step's output is \(size) bytes, more than the limit of \(Wire.maxResultBytes)"
            return .event(instanceID: m.instanceID, .stepFailed(step: m.step, item: m.item, attempt: m.attempt, error: error, retryable: false))
        }
        let event: SagaEvent
        switch kind {
        case .stepCompleted: event = .stepCompleted(step: m.step, item: m.item, attempt: m.attempt, output: m.output ?? .null)
        case .stepFailed: event = .stepFailed(step: m.step, item: m.item, attempt: m.attempt, error: m.error ?? "failed", retryable: m.retryable ?? true)
        case .compensationCompleted: event = .compensationCompleted(step: m.step, item: m.item, attempt: m.attempt)
        default: event = .compensationFailed(step: m.step, item: m.item, attempt: m.attempt, error: m.error ?? "failed")
        }
        return .event(instanceID: m.instanceID, event)
    }

    /// A fired timer: an instance's, or a mailbox's expiry.
    static func timerEvent(_ m: TimerMessage) -> EventMessage {
        Mailbox.isKey(m.instanceID) ? .mailbox(key: m.instanceID, .expire) : .event(instanceID: m.instanceID, .timerFired(m.timer, dueAt: m.dueAt))
    }

    static func checkMailbox(_ key: String) throws(Wire.DecodeError) {
        guard Mailbox.isKey(key) else { throw Wire.DecodeError("field 'mailbox' is '\(key)', which is not a mailbox key (they start with \(Mailbox.keyPrefix))") }
    }

    static func checkAttempt(_ attempt: Int) throws(Wire.DecodeError) {
        guard attempt >= 1 else { throw Wire.DecodeError("field 'attempt' is \(attempt); attempts are numbered from 1 (answer with the command's attempt)") }
    }
}

/// What an instance id may be: 1 to 200 bytes of UTF-8 without control characters, not starting with `~`.
public enum InstanceID {
    public static let maxBytes = 200

    public static func check(_ id: String, field: String) throws(Wire.DecodeError) {
        if id.isEmpty { throw Wire.DecodeError("field '\(field)' must not be empty") }
        if id.hasPrefix("~") { throw Wire.DecodeError("field '\(field)' starts with '~', which is kept for the engine's own keys (mailboxes)") }
        if id.utf8.count > maxBytes { throw Wire.DecodeError("field '\(field)' is \(id.utf8.count) bytes, more than the limit of \(maxBytes)") }
        if let c = id.unicodeScalars.first(where: { $0.properties.generalCategory == .control }) {
            let hex = String(c.value, radix: 16, uppercase: true)
            throw Wire.DecodeError("field '\(field)' contains the control character U+\(String(repeating: "0", count: max(0, 4 - hex.count)))\(hex)")
        }
    }
}

/// A human task as stored on the tasks topic (keyed by task id); the latest record of a task is its state.
public struct TaskRecord: Codable, Sendable, Hashable {
    public enum Status: String, Codable, Sendable { case open, approved, rejected, timedOut = "timed_out", escalated, cancelled }
    public var v = Wire.version
    public var kind = Wire.Kind.task
    public var taskID: String
    public var status: Status
    /// The whole task with its history (every record carries it; records written before 0.2 closed a task
    /// without it: take it from the task's earlier record).
    public var task: HumanTask?
    public var decidedBy: String?
    /// The events partition of the instance, where a decision must be sent.
    public var partition: Int32
    public var at: Int64

    public init(taskID: String, status: Status, task: HumanTask?, decidedBy: String?, partition: Int32, at: Int64) {
        self.taskID = taskID
        self.status = status
        self.task = task
        self.decidedBy = decidedBy
        self.partition = partition
        self.at = at
    }

    enum CodingKeys: String, CodingKey { case v, kind, taskID = "task_id", status, task, decidedBy = "decided_by", partition, at }
}

/// A registered definition, keyed `<workflow_id>@<version>` on the definitions topic.
public struct DefinitionRecord: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.definition
    public var workflowID: String
    public var version: Int
    /// The document as registered (JSON or YAML text).
    public var document: String
    public var registeredAt: Int64

    public init(workflowID: String, version: Int, document: String, registeredAt: Int64) {
        self.workflowID = workflowID
        self.version = version
        self.document = document
        self.registeredAt = registeredAt
    }

    public static func key(_ workflowID: String, _ version: Int) -> String { "\(workflowID)@\(version)" }

    enum CodingKeys: String, CodingKey { case v, kind, workflowID = "workflow_id", version, document, registeredAt = "registered_at" }
}

/// An alert to the on-call, about an instance (a workflow failed, a compensation keeps failing) or about the
/// engine itself (a coordinator cannot commit a partition): then `instance_id` and `workflow_id` are absent
/// and `partition` names the events partition.
public struct AlertMessage: Codable, Sendable, Hashable {
    public var severity: Alert.Severity
    public var instanceID: String?
    public var workflowID: String?
    public var step: String?
    public var message: String
    public var partition: Int32?

    public init(severity: Alert.Severity, instanceID: String?, workflowID: String?, step: String?, message: String, partition: Int32? = nil) {
        self.severity = severity
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.step = step
        self.message = message
        self.partition = partition
    }

    public init(_ alert: Alert) {
        self.init(severity: alert.severity, instanceID: alert.instanceID, workflowID: alert.workflowID, step: alert.step, message: alert.message)
    }

    enum CodingKeys: String, CodingKey { case severity, instanceID = "instance_id", workflowID = "workflow_id", step, message, partition }
}

public struct AlertRecord: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.alert
    public var alert: AlertMessage
    public var at: Int64
    public init(alert: AlertMessage, at: Int64) {
        self.alert = alert
        self.at = at
    }
}

/// A step's output, kept apart from the instance's state snapshot on the compacted outputs topic, on the
/// instance's partition and keyed `<instance_id>/<step>#<item>` (`#0` for a step without items), or
/// `<instance_id>/<step>` for an output an operator gave a skipped step.
public struct OutputRecord: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.output
    public var instanceID: String
    public var step: String
    /// The unit: a for_each item's position, 0 for a step without items, nil for a skipped step's output.
    public var item: Int?
    public var attempt: Int
    public var output: JSON

    public init(instanceID: String, step: String, item: Int?, attempt: Int, output: JSON) {
        self.instanceID = instanceID
        self.step = step
        self.item = item
        self.attempt = attempt
        self.output = output
    }

    public var key: String { Self.key(instanceID: instanceID, step: step, item: item) }

    public static func key(instanceID: String, step: String, item: Int?) -> String {
        item.map { "\(instanceID)/\(step)#\($0)" } ?? "\(instanceID)/\(step)"
    }

    enum CodingKeys: String, CodingKey { case v, kind, instanceID = "instance_id", step, item, attempt, output }
}

public struct NotificationRecord: Codable, Sendable, Hashable {
    public var v = Wire.version
    public var kind = Wire.Kind.notification
    public var notification: NotificationMessage
    public var at: Int64
    public init(notification: NotificationMessage, at: Int64) {
        self.notification = notification
        self.at = at
    }
}

/// Headers every Baton record carries.
public enum WireHeaders {
    public static let kind = "baton-kind"
    public static let version = "baton-v"
    /// On dead letters: why the record was refused, and where it came from.
    public static let deadLetterReason = "baton-dlq-reason"
    /// On dead letters: why, as a code a program can branch on (`unreadable`, `unknown_instance`, ...:
    /// docs/wire-protocol.md#dead-letters); the reason above says it for people.
    public static let deadLetterCode = "baton-dlq-code"
    public static let deadLetterTopic = "baton-dlq-topic"
    public static let deadLetterPartition = "baton-dlq-partition"
    public static let deadLetterOffset = "baton-dlq-offset"
    public static let deadLetterSize = "baton-dlq-size"
    /// On state snapshots: the events offset committed in the same transaction. A rebuild ignores snapshots
    /// past the group's committed offset: they come from a transaction that did not commit.
    public static let eventsOffset = "baton-events-offset"
    /// On state snapshots: which coordinator (host and process) wrote it.
    public static let coordinator = "baton-coordinator"

    /// A dead letter for a refused record: its key, headers and (at most `Wire.maxDeadLetterBytes` of) its
    /// value, with why it was refused and where it came from.
    public static func deadLetter(
        topic: String, key: Data?, value: Data?, headers: [KafkaHeaderFields], code: String, reason: String, source: String, partition: Int32, offset: Int64
    ) -> (key: Data?, value: Data?, headers: [KafkaHeaderFields]) {
        var out = headers
        out.append((deadLetterCode, Data(code.utf8)))
        out.append((deadLetterReason, Data(reason.utf8)))
        out.append((deadLetterTopic, Data(source.utf8)))
        out.append((deadLetterPartition, Data(String(partition).utf8)))
        out.append((deadLetterOffset, Data(String(offset).utf8)))
        var kept = value
        if let value, value.count > Wire.maxDeadLetterBytes {
            out.append((deadLetterSize, Data(String(value.count).utf8)))
            kept = value.prefix(Wire.maxDeadLetterBytes)
        }
        return (key, kept, out)
    }
}

public typealias KafkaHeaderFields = (key: String, value: Data?)

/// Where records from business topics meet the instances waiting for them.
///
/// A `wait_for_event` step waits for a record on a topic whose correlation value (read from the record) equals
/// the instance's (read from the instance). Both sides go to the mailbox of that topic, correlation path and
/// value: the record as it is read (`publish`), the waiting attempt when it starts (`subscribe`). Whichever comes
/// second makes the match, so a record that arrives before its instance waits is kept (for its time-to-live) and
/// delivered when it does.
///
/// Rules:
/// - Subscriptions are served oldest first. A record goes to the first waiting attempt that does not
///   `broadcast`, which consumes it; before that, to every waiting attempt that does, which leaves it for
///   others (until it expires).
/// - A subscription takes the oldest kept record that arrived no earlier than its own time-to-live before it
///   started waiting.
/// - A record is known by where it was read (`<topic>/<partition>/<offset>`): read again (a trigger process that
///   crashed before committing), it changes nothing, also after it was consumed (until it would have expired).
/// - A record an instance could not take (its attempt had timed out meanwhile) comes back (`returned`) and is
///   offered again.
/// - Kept records, subscriptions and the memory of consumed records are bounded in time (`expiresAt`, `until`)
///   and in number (`maxMessages`, `maxValueBytes`, oldest dropped first, with the effect saying so).
///
/// Like `Saga`, a pure function of (mailbox, event, now): no I/O, no clock.
public struct Mailbox: Sendable, Hashable, Codable {
    public var key: String
    /// Records waiting for an instance, oldest first.
    public var messages: [EventRecord] = []
    /// Attempts waiting for a record, oldest first.
    public var subscriptions: [EventSubscription] = []
    /// Records consumed already, by id, with when they would have expired: a second copy of one changes nothing.
    public var consumed: [String: Timestamp] = [:]

    public init(key: String) { self.key = key }

    public static let maxMessages = 1_000
    /// What the kept records' values may add up to, so that a snapshot stays well under the broker's 1 MB.
    public static let maxValueBytes = 700 << 10
    public static let maxConsumed = 10_000

    /// The prefix that sets mailbox keys apart from instance ids on the events topic (ids may not start with `~`).
    public static let keyPrefix = "~mailbox/"

    /// The key of the mailbox where records of `topic` whose `correlate` path gives `value` meet the attempts
    /// waiting for that value.
    public static func key(topic: String, correlate: String, value: String) -> String {
        "\(keyPrefix)\(topic)/\(correlate)/\(value)"
    }

    public static func isKey(_ key: String) -> Bool { key.hasPrefix(keyPrefix) }

    /// A correlation value as text: a string as it is, anything else as its JSON (`17`, `true`); nil for null
    /// or a missing value, which correlates with nothing.
    public static func correlationText(_ value: JSON?) -> String? {
        switch value {
        case nil, .null?: nil
        case .string(let s)?: s
        case let other?: other.jsonText
        }
    }

    public var isEmpty: Bool { messages.isEmpty && subscriptions.isEmpty && consumed.isEmpty }

    /// When something in the mailbox next expires (the coordinator arms a timer for it).
    public var nextExpiry: Timestamp? {
        (messages.map(\.expiresAt) + subscriptions.map(\.until) + consumed.values).min()
    }

    public static func apply(_ mailbox: Mailbox, _ event: MailboxEvent, now: Timestamp) -> MailboxTransition {
        var m = mailbox
        var effects: [MailboxEffect] = []
        let outcome = m.handle(event, now: now, effects: &effects)
        if case .ignored = outcome { return MailboxTransition(mailbox: mailbox, effects: [], outcome: outcome) }
        return MailboxTransition(mailbox: m, effects: effects, outcome: outcome)
    }

    mutating func handle(_ event: MailboxEvent, now: Timestamp, effects: inout [MailboxEffect]) -> MailboxOutcome {
        expire(now: now, effects: &effects)
        switch event {
        case .publish(let record):
            if messages.contains(where: { $0.id == record.id }) || consumed[record.id] != nil {
                return .ignored("record \(record.id) was received already")
            }
            offer(record, now: now, effects: &effects)
        case .returned(let record):
            guard record.expiresAt > now else { return .ignored("record \(record.id) came back after it expired") }
            guard !messages.contains(where: { $0.id == record.id }) else { return .ignored("record \(record.id) is kept already") }
            consumed[record.id] = nil
            offer(record, now: now, effects: &effects)
        case .subscribe(let subscription):
            if subscriptions.contains(where: { $0.sameAttempt(as: subscription) }) {
                return .ignored("attempt \(subscription.attempt) of \(subscription.instanceID)/\(subscription.step) waits already")
            }
            guard subscription.until > now else { return .ignored("attempt \(subscription.attempt) of \(subscription.instanceID)/\(subscription.step) is past its deadline") }
            let earliest = subscription.since - subscription.ttl.value
            if let i = messages.firstIndex(where: { $0.at >= earliest }) {
                let record = messages[i]
                effects.append(.deliver(subscription, record))
                if !subscription.broadcast {
                    messages.remove(at: i)
                    remember(record)
                }
            } else {
                subscriptions.append(subscription)
            }
        case .unsubscribe(let subscription):
            guard let i = subscriptions.firstIndex(where: { $0.sameAttempt(as: subscription) }) else {
                return .ignored("attempt \(subscription.attempt) of \(subscription.instanceID)/\(subscription.step) is not waiting")
            }
            subscriptions.remove(at: i)
        case .expire:
            // What expired went above; a timer that fires early or twice changes nothing else.
            if effects.isEmpty { return .ignored("nothing has expired") }
        }
        return .applied
    }

    /// Gives a record to the waiting attempts; keeps it unless one consumed it.
    mutating func offer(_ record: EventRecord, now: Timestamp, effects: inout [MailboxEffect]) {
        var taken = false
        var i = 0
        while i < subscriptions.count {
            let s = subscriptions[i]
            guard record.at >= s.since - s.ttl.value else {
                i += 1
                continue
            }
            effects.append(.deliver(s, record))
            subscriptions.remove(at: i)
            if !s.broadcast {
                taken = true
                break
            }
        }
        if taken {
            remember(record)
            return
        }
        guard record.expiresAt > now else { return }
        messages.append(record)
        var bytes = messages.reduce(0) { $0 + $1.value.encodedSize }
        while messages.count > Self.maxMessages || (bytes > Self.maxValueBytes && messages.count > 1) {
            let dropped = messages.removeFirst()
            bytes -= dropped.value.encodedSize
            effects.append(.dropped(dropped, reason: "the mailbox holds more than \(Self.maxMessages) records or \(Self.maxValueBytes) bytes of them"))
        }
    }

    mutating func remember(_ record: EventRecord) {
        consumed[record.id] = record.expiresAt
        if consumed.count > Self.maxConsumed, let oldest = consumed.min(by: { $0.value < $1.value }) { consumed[oldest.key] = nil }
    }

    mutating func expire(now: Timestamp, effects: inout [MailboxEffect]) {
        let before = (messages.count, subscriptions.count, consumed.count)
        for record in messages where record.expiresAt <= now { effects.append(.dropped(record, reason: "nobody waited for it within its time-to-live")) }
        messages.removeAll { $0.expiresAt <= now }
        subscriptions.removeAll { $0.until <= now }
        consumed = consumed.filter { $0.value > now }
        if (messages.count, subscriptions.count, consumed.count) != before { effects.append(.expired) }
    }
}

/// A record from a business topic, as a mailbox keeps it and a waiting step receives it.
public struct EventRecord: Sendable, Hashable, Codable {
    /// Where it was read, `<topic>/<partition>/<offset>`: unique, so that a record read twice counts once.
    public var id: String
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    /// The record's key as UTF-8 text, if it has one.
    public var key: String?
    /// The record's value (JSON); the step's output.
    public var value: JSON
    public var headers: [String: String]?
    /// The record's own timestamp (epoch milliseconds), if it has one.
    public var timestamp: Int64?
    /// When Baton read it.
    public var at: Timestamp
    /// Until when it is kept for attempts that start waiting after it arrived.
    public var expiresAt: Timestamp

    public init(
        topic: String, partition: Int32, offset: Int64, key: String?, value: JSON, headers: [String: String]? = nil, timestamp: Int64? = nil,
        at: Timestamp, expiresAt: Timestamp
    ) {
        self.id = "\(topic)/\(partition)/\(offset)"
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.at = at
        self.expiresAt = expiresAt
    }

    enum CodingKeys: String, CodingKey { case id, topic, partition, offset, key, value, headers, timestamp, at, expiresAt = "expires_at" }

    /// What `$.event` paths read: `{key, value, headers, topic, partition, offset, timestamp}`.
    public var pathValue: JSON { Self.pathValue(topic: topic, partition: partition, offset: offset, key: key, value: value, headers: headers, timestamp: timestamp) }

    public static func pathValue(topic: String, partition: Int32, offset: Int64, key: String?, value: JSON?, headers: [String: String]?, timestamp: Int64?) -> JSON {
        var o: [String: JSON] = ["topic": .string(topic), "partition": .number(Double(partition)), "offset": .number(Double(offset))]
        if let key { o["key"] = .string(key) }
        if let value { o["value"] = value }
        if let headers { o["headers"] = .object(headers.mapValues { .string($0) }) }
        if let timestamp { o["timestamp"] = .number(Double(timestamp)) }
        return .object(o)
    }
}

/// A `wait_for_event` step's attempt waiting in a mailbox.
public struct EventSubscription: Sendable, Hashable, Codable {
    public var mailbox: String
    public var instanceID: String
    public var workflowID: String
    public var step: String
    public var attempt: Int
    /// When the attempt started waiting.
    public var since: Timestamp
    /// Records that arrived up to this long before `since` are still for it.
    public var ttl: Millis
    /// The attempt's deadline: it stops waiting then (its instance says so too, with `unsubscribe`).
    public var until: Timestamp
    public var broadcast: Bool

    public init(mailbox: String, instanceID: String, workflowID: String, step: String, attempt: Int, since: Timestamp, ttl: Millis, until: Timestamp, broadcast: Bool) {
        self.mailbox = mailbox
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.step = step
        self.attempt = attempt
        self.since = since
        self.ttl = ttl
        self.until = until
        self.broadcast = broadcast
    }

    enum CodingKeys: String, CodingKey {
        case mailbox, instanceID = "instance_id", workflowID = "workflow_id", step, attempt, since, ttl, until, broadcast
    }

    func sameAttempt(as other: EventSubscription) -> Bool {
        instanceID == other.instanceID && step == other.step && attempt == other.attempt
    }
}

public enum MailboxEvent: Sendable, Hashable {
    /// A record read from a business topic (by `baton triggers`).
    case publish(EventRecord)
    /// A record delivered to an attempt that could no longer take it.
    case returned(EventRecord)
    case subscribe(EventSubscription)
    case unsubscribe(EventSubscription)
    /// The mailbox's expiry timer fired.
    case expire
}

public enum MailboxEffect: Sendable, Hashable {
    /// The record goes to the waiting attempt (an `event.received` on its instance's partition).
    case deliver(EventSubscription, EventRecord)
    /// A kept record was dropped unused.
    case dropped(EventRecord, reason: String)
    /// Something expired (kept records, subscriptions past their deadline, memory of consumed records).
    case expired
}

public enum MailboxOutcome: Sendable, Hashable {
    case applied
    case ignored(String)
}

public struct MailboxTransition: Sendable, Hashable {
    public var mailbox: Mailbox
    public var effects: [MailboxEffect]
    public var outcome: MailboxOutcome
}

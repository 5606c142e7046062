import BatonCore
import BatonRecords
import BatonWire

public struct TimerEntry: Comparable, Hashable, Sendable {
    public var dueAt: Timestamp
    public var instanceID: String
    public var key: TimerKey

    public init(dueAt: Timestamp, instanceID: String, key: TimerKey) {
        self.dueAt = dueAt
        self.instanceID = instanceID
        self.key = key
    }

    public static func < (a: TimerEntry, b: TimerEntry) -> Bool {
        if a.dueAt != b.dueAt { return a.dueAt < b.dueAt }
        if a.instanceID != b.instanceID { return a.instanceID < b.instanceID }
        return a.key.order < b.key.order
    }
}

extension TimerKey {
    /// A total order without building strings (a heap compares often).
    public var order: (Int, Int, Int, Int) {
        let rank: Int =
            switch kind {
            case .retry: 0
            case .stepTimeout: 1
            case .taskTimeout: 2
            case .compensationRetry: 3
            case .compensationTimeout: 4
            case .workflowTimeout: 5
            case .heartbeat: 6
            case .retention: 7
            case .mailbox: 8
            }
        return (rank, step ?? -1, item ?? -1, attempt)
    }
}

/// Where a record of a transaction comes from: what to do when the broker refuses it.
public enum RecordOrigin: Hashable, Sendable, CustomStringConvertible {
    case snapshot(String)
    case output(String, step: String, item: Int?)
    case command(String, step: String, item: Int?, attempt: Int, compensation: Bool)
    case task(String, taskID: String)
    case alert(String)
    case notification(String)
    case deadLetter(offset: Int64)
    case tombstone(String)
    /// An event wait's subscription (or its end), sent to its mailbox.
    case subscription(String, step: String, attempt: Int)
    /// A mailbox's snapshot, a record it delivers, or a record given back to it.
    case mailbox(String)

    public var instanceID: String? {
        switch self {
        case .snapshot(let id), .output(let id, _, _), .command(let id, _, _, _, _), .task(let id, _), .alert(let id), .notification(let id), .tombstone(let id),
            .subscription(let id, _, _):
            id
        case .deadLetter, .mailbox: nil
        }
    }

    public var description: String {
        switch self {
        case .snapshot: "the state snapshot"
        case .output(_, let step, let item): "the output of '\(step)'\(item.map { " item \($0)" } ?? "")"
        case .command(_, let step, let item, let attempt, let compensation):
            "the \(compensation ? "compensation " : "")command for attempt \(attempt) of '\(step)'\(item.map { " item \($0)" } ?? "")"
        case .task(_, let taskID): "the task record \(taskID)"
        case .alert: "an alert"
        case .notification: "a notification"
        case .deadLetter(let offset): "the dead letter of events offset \(offset)"
        case .tombstone: "a tombstone"
        case .subscription(_, let step, let attempt): "the event subscription of attempt \(attempt) of '\(step)'"
        case .mailbox(let key): "a record of mailbox \(key)"
        }
    }
}

/// A record to write in a transaction, with where it comes from.
public struct OutgoingRecord: Sendable {
    public var record: ProducerRecord
    public var origin: RecordOrigin

    public init(record: ProducerRecord, origin: RecordOrigin) {
        self.record = record
        self.origin = origin
    }

    /// What the record weighs against the broker's limit (key, value, headers, and a batch's overhead).
    public var size: Int {
        (record.key?.count ?? 0) + (record.value?.count ?? 0) + record.headers.reduce(0) { $0 + $1.key.utf8.count + ($1.value?.count ?? 0) + 8 } + 64
    }
}

extension TaskRecord.Status {
    public init(_ resolution: TaskResolution) {
        switch resolution {
        case .approved: self = .approved
        case .rejected: self = .rejected
        case .timedOut: self = .timedOut
        case .escalated: self = .escalated
        case .cancelled: self = .cancelled
        }
    }
}

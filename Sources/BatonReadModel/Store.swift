import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import DequeModule
import Foundation
import Logging

/// An instance as the read model indexes it: what lists and filters need, and its latest snapshot as stored
/// (decoded only when someone asks for the instance).
struct InstanceEntry: Sendable {
    var summary: InstanceSummary
    var snapshot: Data
}

struct DefinitionEntry: Sendable {
    var record: DefinitionRecord
    var workflow: Workflow?
    /// Why the registered document does not load (a record written by something other than Baton).
    var error: String?
}

/// The views, as one value guarded by the read model's lock.
struct Store: Sendable {
    var instances: [String: InstanceEntry] = [:]
    var byStatus: [InstanceStatus: Set<String>] = [:]
    /// Outputs by instance, then by record key (as stored: decoded only when asked for).
    var outputs: [String: [String: Data]] = [:]
    var tasks: [String: TaskRecord] = [:]
    /// The winning registration of each version (`<id>@<version>`), as `definitionLog` decides.
    var definitions: [String: DefinitionEntry] = [:]
    /// The registrations read, decided by the rule every reader shares (`DefinitionLog`: first per version wins).
    var definitionLog = DefinitionLog()
    var alerts: Deque<AlertEntry> = []
    var deadLetters: Deque<DeadLetterEntry> = []
    let recentAlerts: Int
    let recentDeadLetters: Int
    /// Bytes of the snapshots and outputs held (for the memory figures).
    var heldBytes = 0

    init(recentAlerts: Int, recentDeadLetters: Int) {
        self.recentAlerts = recentAlerts
        self.recentDeadLetters = recentDeadLetters
    }

    /// Applies a record; returns what changed, or nil when nothing did (or the record cannot be read: it is
    /// logged and skipped, and the views keep what they had).
    mutating func apply(_ m: KafkaMessage, names: TopicNames, logger: Logger) -> ReadModelChange? {
        let at = m.timestamp ?? WallClock.millis()
        do {
            switch m.topic {
            case names.state: return try applyState(m, at: at)
            case names.outputs: return try applyOutput(m)
            case names.tasks: return try applyTask(m)
            case names.definitions: return try applyDefinition(m)
            case names.alerts: return try applyAlert(m, at: at)
            case names.deadletter: return applyDeadLetter(m, at: at)
            default: return nil
            }
        } catch {
            logger.warning("read model: skipping a record it cannot read", metadata: ["offset": "\(m.topicPartition)@\(m.offset)", "error": "\(error)"])
            return nil
        }
    }

    mutating func applyState(_ m: KafkaMessage, at: Int64) throws -> ReadModelChange? {
        guard let id = m.keyString else { return nil }
        guard let value = m.value else {
            guard let old = instances.removeValue(forKey: id) else { return nil }
            byStatus[old.summary.status]?.remove(id)
            heldBytes -= old.snapshot.count
            if let gone = outputs.removeValue(forKey: id) { heldBytes -= gone.values.reduce(0) { $0 + $1.count } }
            return ReadModelChange(kind: .instance, id: id, instanceID: id, workflowID: old.summary.workflowID, status: nil, removed: true)
        }
        let state = try StateCodec.decode(value)
        let summary = InstanceSummary(state, updatedAt: at)
        if let old = instances[id] {
            byStatus[old.summary.status]?.remove(id)
            heldBytes -= old.snapshot.count
        }
        instances[id] = InstanceEntry(summary: summary, snapshot: value)
        byStatus[summary.status, default: []].insert(id)
        heldBytes += value.count
        return ReadModelChange(kind: .instance, id: id, instanceID: id, workflowID: state.workflowID, status: state.status.rawValue)
    }

    mutating func applyOutput(_ m: KafkaMessage) throws -> ReadModelChange? {
        guard let key = m.keyString else { return nil }
        let instanceID: String
        if let value = m.value {
            instanceID = try Wire.decode(OutputRecord.self, from: value).instanceID
            let old = outputs[instanceID, default: [:]].updateValue(value, forKey: key)
            heldBytes += value.count - (old?.count ?? 0)
        } else {
            // `<instance>/<step>#<item>`: step ids have no `/`, instance ids may.
            guard let slash = key.lastIndex(of: "/") else { return nil }
            instanceID = String(key[..<slash])
            if let old = outputs[instanceID]?.removeValue(forKey: key) { heldBytes -= old.count }
            if outputs[instanceID]?.isEmpty == true { outputs[instanceID] = nil }
        }
        // The snapshot that goes with an output comes in the same transaction; it announces the change.
        return nil
    }

    mutating func applyTask(_ m: KafkaMessage) throws -> ReadModelChange? {
        guard let id = m.keyString else { return nil }
        guard let value = m.value else {
            guard let old = tasks.removeValue(forKey: id) else { return nil }
            return ReadModelChange(kind: .task, id: id, instanceID: old.task?.instanceID, workflowID: old.task?.workflowID, status: nil, removed: true)
        }
        var record = try Wire.decode(TaskRecord.self, from: value)
        // Records written before 0.2 closed a task without repeating it.
        if record.task == nil { record.task = tasks[id]?.task }
        tasks[id] = record
        return ReadModelChange(kind: .task, id: id, instanceID: record.task?.instanceID, workflowID: record.task?.workflowID, status: record.status.rawValue)
    }

    mutating func applyDefinition(_ m: KafkaMessage) throws -> ReadModelChange? {
        guard let change = try definitionLog.apply(key: m.keyString, value: m.value) else { return nil }
        let key = change.version
        guard let record = change.winner?.record else {
            definitions[key] = nil
            return ReadModelChange(kind: .definition, id: key, removed: true)
        }
        var entry = DefinitionEntry(record: record)
        do {
            entry.workflow = try DefinitionLoader.load(Data(record.document.utf8), source: key)
        } catch {
            entry.error = "\(error)"
        }
        definitions[key] = entry
        return ReadModelChange(kind: .definition, id: key, workflowID: record.workflowID)
    }

    mutating func applyAlert(_ m: KafkaMessage, at: Int64) throws -> ReadModelChange? {
        guard let value = m.value else { return nil }
        let record = try Wire.decode(AlertRecord.self, from: value)
        let entry = AlertEntry(id: "\(m.partition)-\(m.offset)", at: record.at, alert: record.alert)
        alerts.append(entry)
        if alerts.count > recentAlerts { alerts.removeFirst() }
        return ReadModelChange(kind: .alert, id: entry.id, instanceID: record.alert.instanceID, workflowID: record.alert.workflowID, status: record.alert.severity.rawValue)
    }

    mutating func applyDeadLetter(_ m: KafkaMessage, at: Int64) -> ReadModelChange? {
        func header(_ name: String) -> String? { m.header(name).map { String(decoding: $0, as: UTF8.self) } }
        let entry = DeadLetterEntry(
            id: "\(m.partition)-\(m.offset)", at: at, reason: header(WireHeaders.deadLetterReason) ?? "(no reason given)",
            sourceTopic: header(WireHeaders.deadLetterTopic), sourcePartition: header(WireHeaders.deadLetterPartition).flatMap { Int32($0) },
            sourceOffset: header(WireHeaders.deadLetterOffset).flatMap { Int64($0) }, key: m.key, value: m.value,
            originalSize: header(WireHeaders.deadLetterSize).flatMap { Int($0) } ?? m.value?.count ?? 0,
            headers: m.headers.filter { !$0.key.hasPrefix("baton-dlq-") })
        deadLetters.append(entry)
        if deadLetters.count > recentDeadLetters { deadLetters.removeFirst() }
        return ReadModelChange(kind: .deadletter, id: entry.id, instanceID: m.keyString, status: nil)
    }
}

/// An alert as the read model keeps it; `id` is `<partition>-<offset>` on the alerts topic.
public struct AlertEntry: Sendable, Hashable, Codable {
    public var id: String
    public var at: Int64
    public var alert: AlertMessage
}

/// A dead letter; `id` is `<partition>-<offset>` on the dead-letter topic.
public struct DeadLetterEntry: Sendable, Hashable {
    public var id: String
    public var at: Int64
    public var reason: String
    public var sourceTopic: String?
    public var sourcePartition: Int32?
    public var sourceOffset: Int64?
    public var key: Data?
    public var value: Data?
    /// The refused record's size (its value is cut at `Wire.maxDeadLetterBytes`).
    public var originalSize: Int
    /// The refused record's own headers.
    public var headers: [KafkaHeader]

    /// Whether the value is whole (not cut), so that it can be sent again.
    public var isWhole: Bool { (value?.count ?? 0) == originalSize }
}

import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation

/// What `baton triggers` reads, and what it makes of each record: built from the registered definitions.
///
/// A topic is read when the latest version of a workflow has a trigger on it, or when any registered version
/// has a `wait_for_event` step on it (instances of older versions may still wait). Records are turned into
/// records on the events topic by `process`, a pure function of the record (and the time, which only sets
/// `sent_at`, `at` and `expires_at`): a record read twice makes the same starts (same instance id, workflow,
/// version, input and request id) and the same mailbox records (same record id), which the engine counts once.
public struct TriggerPlan: Sendable {
    /// A trigger of the latest version of a workflow.
    public struct Trigger: Sendable {
        public var workflowID: String
        public var version: Int
        /// Its place in the definition's `triggers`.
        public var index: Int
        public var definition: TriggerDefinition
        public var condition: Condition?
        let instanceID: ValuePath

        /// How a dead letter's reason names it.
        var name: String { "trigger triggers[\(index)] of \(workflowID) v\(version)" }
    }

    /// The `wait_for_event` steps of one topic that read the same correlation path: one mailbox record each
    /// record, kept for the longest time-to-live any of them asks for.
    public struct Wait: Sendable {
        public var topic: String
        public var correlate: String
        let path: ValuePath
        /// The largest `ttl` (or, without one, step timeout) of the steps.
        public var ttl: Millis
        /// The steps, as `<workflow> v<version> step '<id>'`.
        public var steps: [String]

        var name: String { steps.count == 1 ? steps[0] : "\(steps.count) wait_for_event steps (\(steps.prefix(3).joined(separator: ", "))\(steps.count > 3 ? ", ..." : ""))" }
    }

    /// Everything that reads one topic.
    public struct Readers: Sendable {
        public var triggers: [Trigger] = []
        public var waits: [Wait] = []

        /// Who reads the topic, for the reason of a record none of them can read.
        var names: String {
            (triggers.map { "\($0.name) (instance id \($0.definition.instanceID))" } + waits.map { "\($0.name) (correlation \($0.correlate))" }).joined(separator: ", ")
        }
    }

    /// The topics to read, with their readers.
    public var topics: [String: Readers]
    /// Topics that definitions name but that are not read (the engine's own), with why and who names them.
    public var refused: [String: String]
    /// Partitions of the events topic: starts and mailbox records go to murmur2(key) modulo this.
    public var eventsPartitions: Int
    /// The registry's generation this plan was built from.
    public var generation: Int

    /// The largest record value triggers and event waits read (a larger one is dead-lettered): the limit of a
    /// start's input.
    public static let maxValueBytes = Wire.maxInputBytes

    public var topicNames: [String] { topics.keys.sorted() }

    public init(workflows: [Workflow], latest: [String: Int], namespace: String, eventsPartitions: Int, generation: Int = 0) {
        var topics: [String: Readers] = [:]
        var refused: [String: [String]] = [:]
        var problems: [String: String] = [:]
        let ordered = workflows.sorted { ($0.id, $0.version) < ($1.id, $1.version) }
        func allowed(_ topic: String, by who: String) -> Bool {
            guard let problem = WorkflowValidator.engineTopicProblem(topic, namespace: namespace) else { return true }
            problems[topic] = problem
            refused[topic, default: []].append(who)
            return false
        }
        for workflow in ordered where latest[workflow.id] == workflow.version {
            for (i, trigger) in workflow.definition.triggers.enumerated() {
                let name = "triggers[\(i)] of \(workflow.id) v\(workflow.version)"
                guard allowed(trigger.topic, by: name), let path = try? ValuePath(parsing: trigger.instanceID) else { continue }
                let condition = i < workflow.triggerConditions.count ? workflow.triggerConditions[i] : trigger.when.flatMap { try? Condition(parsing: $0) }
                topics[trigger.topic, default: Readers()].triggers.append(
                    Trigger(workflowID: workflow.id, version: workflow.version, index: i, definition: trigger, condition: condition, instanceID: path))
            }
        }
        for workflow in ordered {
            for step in workflow.steps {
                guard let event = step.event else { continue }
                let name = "\(workflow.id) v\(workflow.version) step '\(step.id)'"
                guard allowed(event.topic, by: name), let path = try? ValuePath(parsing: event.correlate) else { continue }
                let ttl = event.ttl ?? step.effectiveTimeout
                var readers = topics[event.topic, default: Readers()]
                if let g = readers.waits.firstIndex(where: { $0.correlate == event.correlate }) {
                    readers.waits[g].ttl = max(readers.waits[g].ttl, ttl)
                    readers.waits[g].steps.append(name)
                } else {
                    readers.waits.append(Wait(topic: event.topic, correlate: event.correlate, path: path, ttl: ttl, steps: [name]))
                }
                topics[event.topic] = readers
            }
        }
        self.topics = topics
        self.refused = Dictionary(uniqueKeysWithValues: refused.map { topic, who in ("\(topic)", "\(problems[topic] ?? "refused"); named by \(who.joined(separator: ", "))") })
        self.eventsPartitions = max(1, eventsPartitions)
        self.generation = generation
    }

    /// What one record comes to.
    public struct Outcome: Sendable {
        /// Starts and mailbox records for the events topic, then the dead letter, if any.
        public var records: [ProducerRecord] = []
        /// The workflows started (one entry per start).
        public var started: [String] = []
        /// Mailbox records written.
        public var published = 0
        /// Why the record (or part of what it should have done) went to the dead-letter topic.
        public var deadLetter: String?
        /// A tombstone, or a record on a topic nothing reads any more.
        public var tombstone = false

        /// The outcomes it counts under in `baton_triggers_records_total`.
        public var labels: [String] {
            var out: [String] = []
            if !started.isEmpty { out.append("started") }
            if published > 0 { out.append("published") }
            if deadLetter != nil { out.append("dead_lettered") }
            return out.isEmpty ? ["ignored"] : out
        }
    }

    /// Turns a record into starts (one per trigger whose condition holds), mailbox records (one per correlation
    /// path of the topic's event waits) and, for what cannot be read, a dead letter naming the record, the
    /// trigger or step, the path and what is wrong.
    public func process(_ m: KafkaMessage, names: TopicNames, now: Timestamp) -> Outcome {
        var outcome = Outcome()
        let place = "record \(m.topic)/\(m.partition)/\(m.offset)"
        guard let readers = topics[m.topic], let data = m.value else {
            outcome.tombstone = true
            return outcome
        }
        func deadLetter(_ reason: String) {
            outcome.deadLetter = reason
            outcome.records.append(deadLetterRecord(m, code: .unreadable, reason: reason, topic: names.deadletter))
        }
        guard data.count <= Self.maxValueBytes else {
            deadLetter("\(place): $.event.value is \(data.count) bytes, more than the limit of \(Self.maxValueBytes); read by \(readers.names)")
            return outcome
        }
        let value: JSON
        do { value = try JSON.parse(data) } catch {
            deadLetter("\(place): $.event.value is not JSON (\(Self.describe(error))); read by \(readers.names)")
            return outcome
        }
        var headers: [String: String] = [:]
        for h in m.headers { if let v = h.value { headers[h.key] = String(decoding: v, as: UTF8.self) } }
        let key = m.keyString
        let event = EventRecord.pathValue(
            topic: m.topic, partition: m.partition, offset: m.offset, key: key, value: value, headers: headers.isEmpty ? nil : headers, timestamp: m.timestamp)
        let context = PathContext.record(event)
        var problems: [String] = []
        // A start joins the business record's trace, if it has one.
        let trace = m.headers.filter { $0.key == "traceparent" || $0.key == "tracestate" }

        for trigger in readers.triggers {
            if let condition = trigger.condition, !condition.evaluate(in: context) { continue }
            let path = trigger.instanceID.text
            let id: String
            switch trigger.instanceID.resolve(in: context) {
            case .string(let s)?: id = s
            case .number(let n)?: id = JSON.number(n).jsonText
            case nil, .null?:
                problems.append("\(trigger.name): the instance id \(path) is missing")
                continue
            case let other?:
                problems.append("\(trigger.name): the instance id \(path) is \(other.kind), not a string or a number")
                continue
            }
            do { try InstanceID.check(id, field: path) } catch {
                problems.append("\(trigger.name): the instance id is not valid: \(error.reason)")
                continue
            }
            let input = trigger.definition.input.map { InputTemplate.render($0, in: context) } ?? value
            let size = input.encodedSize
            guard size <= Wire.maxInputBytes else {
                problems.append("\(trigger.name): the input is \(size) bytes, more than the limit of \(Wire.maxInputBytes)")
                continue
            }
            let start = StartMessage(
                instanceID: id, workflowID: trigger.workflowID, version: trigger.version, input: input, sentAt: now,
                requestID: Self.requestID(topic: m.topic, partition: m.partition, offset: m.offset))
            outcome.records.append(
                ProducerRecord(
                    topic: names.events, partition: KafkaPartitioner.partition(forKey: id, partitionCount: eventsPartitions), key: Data(id.utf8),
                    value: Wire.encode(start), headers: Wire.headers(.start) + trace))
            outcome.started.append(trigger.workflowID)
        }

        var uncorrelated: [String] = []
        for wait in readers.waits {
            guard let correlation = Mailbox.correlationText(wait.path.resolve(in: context)) else {
                uncorrelated.append("\(wait.name): the correlation value \(wait.correlate) is missing")
                continue
            }
            let mailbox = Mailbox.key(topic: m.topic, correlate: wait.correlate, value: correlation)
            let record = EventRecord(
                topic: m.topic, partition: m.partition, offset: m.offset, key: key, value: value, headers: headers.isEmpty ? nil : headers, timestamp: m.timestamp,
                at: now, expiresAt: now + wait.ttl.value)
            outcome.records.append(
                ProducerRecord(
                    topic: names.events, partition: KafkaPartitioner.partition(forKey: mailbox, partitionCount: eventsPartitions), key: Data(mailbox.utf8),
                    value: Wire.encode(MailboxRecordMessage(kind: .eventPublished, mailbox: mailbox, event: record)), headers: Wire.headers(.eventPublished)))
            outcome.published += 1
        }
        // A record one wait cannot correlate may be for another wait, or a trigger: only one that nothing used is refused.
        if outcome.started.isEmpty && outcome.published == 0 { problems += uncorrelated }
        if !problems.isEmpty { deadLetter("\(place): \(problems.joined(separator: "; "))") }
        return outcome
    }

    /// The request id of the start a record makes: where the record is, so that reading it again makes the same start.
    public static func requestID(topic: String, partition: Int32, offset: Int64) -> String { "trigger/\(topic)/\(partition)/\(offset)" }

    static func describe(_ error: any Error) -> String {
        let text = "\(error)"
        return text.count > 300 ? String(text.prefix(300)) + "..." : text
    }
}

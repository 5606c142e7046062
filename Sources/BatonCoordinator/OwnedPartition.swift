import BatonCore
import BatonKafka
import BatonWire
import BatonRuntime
import Foundation
import HeapModule
import Logging

struct TimerEntry: Comparable, Hashable {
    var dueAt: Timestamp
    var instanceID: String
    var key: TimerKey

    static func < (a: TimerEntry, b: TimerEntry) -> Bool {
        (a.dueAt, a.instanceID, a.key.description) < (b.dueAt, b.instanceID, b.key.description)
    }
}

/// One events partition this coordinator owns: its instances, their timers, and its transactional producer.
final class OwnedPartition {
    let partition: Int32
    let configuration: CoordinatorConfiguration
    let registry: DefinitionRegistry
    let commandTopics: CommandTopics
    let logger: Logger
    let producer: KafkaProducer
    /// Sends due timers to the events partition (outside transactions: a duplicate is harmless).
    let timerProducer: KafkaProducer
    let partitionCount: Int
    var instances: [String: InstanceState]
    var timers = Heap<TimerEntry>()
    var scheduled = Set<TimerEntry>()
    /// Timers sent to the events topic and not yet seen back, by instance.
    var fired: [String: Set<TimerEntry>] = [:]

    var names: TopicNames { configuration.names }

    init(
        partition: Int32, configuration: CoordinatorConfiguration, registry: DefinitionRegistry, commandTopics: CommandTopics, logger: Logger,
        producer: KafkaProducer, timerProducer: KafkaProducer, partitionCount: Int, instances: [String: InstanceState]
    ) {
        self.timerProducer = timerProducer
        self.partition = partition
        self.configuration = configuration
        self.registry = registry
        self.commandTopics = commandTopics
        self.logger = logger
        self.producer = producer
        self.partitionCount = partitionCount
        self.instances = instances
        for state in instances.values { schedule(state) }
    }

    /// Fences the previous owner (its open transaction is aborted), then rebuilds the partition's instances
    /// from the state topic, read to its end, before a single event is processed.
    static func take(
        _ partition: Int32, configuration: CoordinatorConfiguration, registry: DefinitionRegistry, commandTopics: CommandTopics,
        timerProducer: KafkaProducer, group: KafkaConsumer, logger: Logger
    ) async throws -> OwnedPartition {
        let names = configuration.names
        var producerConfiguration = KafkaProducerConfiguration(client: configuration.client)
        producerConfiguration.transactionalID = "\(names.coordinatorGroup).\(partition)"
        producerConfiguration.linger = .milliseconds(1)
        let producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        try await producer.initTransactions()
        // After the fence: what the group committed is exactly what committed transactions wrote.
        let committed = try await group.committed([TopicPartition(names.events, partition)]).first?.offset ?? -1

        let clock = ContinuousClock()
        let started = clock.now
        var stateConfiguration = KafkaConsumerConfiguration(client: configuration.client, groupID: nil)
        stateConfiguration.reportPartitionEOF = true
        stateConfiguration.isolationLevel = .readCommitted
        let reader = try KafkaConsumer(configuration: stateConfiguration, logger: logger)
        let metadata = try await reader.metadata()
        let partitionCount = metadata.topics[names.events]?.partitionCount ?? 0
        try reader.assign([TopicPartitionOffset(names.state, partition, offset: TopicPartitionOffset.beginning)])
        var instances: [String: InstanceState] = [:]
        var records = 0
        var skipped = 0
        var atEnd = false
        while !atEnd {
            guard clock.now - started < .seconds(300) else {
                throw KafkaError(code: .timedOut, message: "rebuilding \(names.state)[\(partition)] took more than 5 minutes", isRetriable: true)
            }
            for event in try await reader.poll(maxEvents: 5000, timeout: .milliseconds(100)) {
                switch event {
                case .message(let m):
                    records += 1
                    guard let id = m.keyString else { continue }
                    if let header = m.header(WireHeaders.eventsOffset), let offset = Int64(String(decoding: header, as: UTF8.self)), offset > max(committed, 0) {
                        skipped += 1
                        continue  // written by a transaction that never committed (visible on brokers that do not hide aborted records)
                    }
                    guard let value = m.value else {
                        instances[id] = nil
                        continue
                    }
                    do { instances[id] = try StateCodec.decode(value) } catch {
                        logger.error("skipping an unreadable state record", metadata: ["offset": "\(partition)/\(m.offset)", "error": "\(error)"])
                    }
                case .partitionEOF: atEnd = true
                default: break
                }
            }
        }
        await reader.close()
        logger.info(
            "took partition", metadata: ["partition": "\(partition)", "instances": "\(instances.count)", "records": "\(records)", "uncommitted": "\(skipped)", "ms": "\((clock.now - started).components.seconds * 1000 + (clock.now - started).components.attoseconds / 1_000_000_000_000_000)"])
        return OwnedPartition(
            partition: partition, configuration: configuration, registry: registry, commandTopics: commandTopics, logger: logger,
            producer: producer, timerProducer: timerProducer, partitionCount: partitionCount, instances: instances)
    }

    func release() async { await producer.close(timeout: .seconds(1)) }

    var nextDue: Timestamp? { timers.min?.dueAt }

    func schedule(_ state: InstanceState) {
        for timer in state.timers {
            let entry = TimerEntry(dueAt: timer.dueAt, instanceID: state.instanceID, key: timer.key)
            if fired[state.instanceID]?.contains(entry) != true, scheduled.insert(entry).inserted { timers.insert(entry) }
        }
    }

    /// Sends due timers to the events partition; they are applied when they come back, in a transaction.
    func fire(_ due: [TimerEntry]) async throws {
        for entry in due {
            let message = TimerMessage(instanceID: entry.instanceID, timer: entry.key, dueAt: entry.dueAt)
            try await timerProducer.enqueue(
                ProducerRecord(
                    topic: names.events, partition: partition, key: Data(entry.instanceID.utf8), value: Wire.encode(message),
                    headers: [KafkaHeader(key: WireHeaders.kind, string: Wire.Kind.timerFired.rawValue), KafkaHeader(key: WireHeaders.version, string: String(Wire.version))]))
            fired[entry.instanceID, default: []].insert(entry)
        }
        try await timerProducer.flush()
    }

    /// Timers that are due and still armed.
    func dueTimers(at now: Timestamp) -> [TimerEntry] {
        var due: [TimerEntry] = []
        while let next = timers.min, next.dueAt <= now {
            timers.removeMin()
            scheduled.remove(next)
            if instances[next.instanceID]?.timers.contains(where: { $0.key == next.key && $0.dueAt == next.dueAt }) == true {
                due.append(next)
            }
        }
        return due
    }

    /// Applies a batch of events and due timers, and writes everything that results in one transaction
    /// with the consumed offsets. On failure nothing of it happened: the instances are restored.
    func process(_ messages: [KafkaMessage], now: Timestamp, consumer: KafkaConsumer) async throws {
        var originals: [String: InstanceState?] = [:]
        var records: [ProducerRecord] = []
        var pools = Set<String>()

        func deadLetter(_ m: KafkaMessage, _ reason: String) {
            logger.warning("dead letter", metadata: ["offset": "\(m.partition)/\(m.offset)", "reason": "\(reason)"])
            records.append(deadLetterRecord(m, reason: reason, topic: names.deadletter))
        }

        func apply(_ id: String, _ transition: Transition) {
            if originals[id] == nil { originals[id] = .some(instances[id]) }
            instances[id] = transition.state
            for effect in transition.effects { records += self.records(for: effect, instanceID: id, now: now, pools: &pools) }
        }

        for m in messages {
            guard let value = m.value else {
                deadLetter(m, "a record without a value")
                continue
            }
            let decoded: EventMessage
            do { decoded = try EventMessage.decode(value) } catch {
                deadLetter(m, error.reason)
                continue
            }
            let id = decoded.instanceID
            switch decoded {
            case .start(let start):
                let home = KafkaPartitioner.partition(forKey: id, partitionCount: partitionCount)
                guard home == partition else {
                    deadLetter(m, "instance \(id) belongs on partition \(home) (murmur2 of its key), not \(partition)")
                    continue
                }
                if instances[id] != nil {
                    logger.debug("duplicate start ignored", metadata: ["instance": "\(id)"])
                    continue
                }
                var workflow = registry.workflow(start.workflowID, version: start.version)
                if workflow == nil {
                    try await registry.catchUp(within: .seconds(2))
                    workflow = registry.workflow(start.workflowID, version: start.version)
                }
                guard let workflow else {
                    deadLetter(m, "unknown workflow '\(start.workflowID)'\(start.version.map { " version \($0)" } ?? ""): register it first")
                    continue
                }
                apply(id, Saga.start(workflow, instanceID: id, input: start.input, now: now))
            case .event(_, let event):
                guard let state = instances[id] else {
                    deadLetter(m, "unknown instance '\(id)' on \(m.topic)[\(m.partition)]")
                    continue
                }
                guard let workflow = registry.workflow(state.workflowID, version: state.version) else {
                    deadLetter(m, "the definition \(state.workflowID)@\(state.version) of instance '\(id)' is not registered")
                    continue
                }
                if let step = event.step, workflow.index[step] == nil {
                    deadLetter(m, "instance '\(id)': no step '\(step)' in \(workflow.id) v\(workflow.version)")
                    continue
                }
                let transition = Saga.apply(workflow, to: state, event: event, now: now)
                switch transition.outcome {
                case .ignored(.unknown(let what)):
                    // About a step or attempt the instance does not have: the sender is broken; keep it for a person.
                    deadLetter(m, "instance '\(id)': \(what)")
                    continue
                case .ignored(let reason):
                    // Duplicates, superseded attempts, commands that do not fit the status: expected, and harmless.
                    logger.debug("event ignored", metadata: ["instance": "\(id)", "reason": "\(reason)"])
                    continue
                case .applied:
                    break
                }
                apply(id, transition)
            }
        }

        try await commandTopics.ensure(Set(pools.map { names.commands($0) }))
        let began = ContinuousClock.now
        do {
            try producer.beginTransaction()
            let committedOffset = messages.last.map { String($0.offset + 1) } ?? ""
            for id in originals.keys.sorted() {
                let value = instances[id].map { StateCodec.encode($0) }
                try await producer.enqueue(
                    ProducerRecord(
                        topic: names.state, partition: partition, key: Data(id.utf8), value: value,
                        headers: [
                            KafkaHeader(key: WireHeaders.eventsOffset, string: committedOffset),
                            KafkaHeader(key: WireHeaders.coordinator, string: configuration.identity),
                        ]))
            }
            for record in records { try await producer.enqueue(record) }
            let produced = ContinuousClock.now
            if let last = messages.last {
                try await producer.sendOffsetsToTransaction([last.nextOffset], consumer: consumer)
            }
            let offsetsSent = ContinuousClock.now
            try await producer.commitTransaction()
            let end = ContinuousClock.now
            logger.debug(
                "committed",
                metadata: [
                    "partition": "\(partition)", "events": "\(messages.count)", "records": "\(records.count + originals.count)",
                    "oldest_ms": "\(messages.compactMap(\.timestamp).min().map { now - $0 } ?? -1)",
                    "ms": "\((end - began).inMilliseconds)", "produce_ms": "\((produced - began).inMilliseconds)",
                    "offsets_ms": "\((offsetsSent - produced).inMilliseconds)", "commit_ms": "\((end - offsetsSent).inMilliseconds)",
                ])
        } catch {
            try? await producer.abortTransaction()
            for (id, original) in originals { instances[id] = original }
            throw error
        }
        for id in originals.keys {
            guard let state = instances[id] else { continue }
            if let pending = fired[id] {
                let stillArmed = pending.filter { entry in state.timers.contains { $0.key == entry.key && $0.dueAt == entry.dueAt } }
                fired[id] = stillArmed.isEmpty ? nil : stillArmed
            }
            schedule(state)
        }
    }

    /// The records an effect becomes. Timers live in the state itself.
    func records(for effect: SagaEffect, instanceID: String, now: Timestamp, pools: inout Set<String>) -> [ProducerRecord] {
        let key = Data(instanceID.utf8)
        func record<T: Encodable>(_ topic: String, _ kind: Wire.Kind, _ value: T, key: Data) -> ProducerRecord {
            ProducerRecord(
                topic: topic, key: key, value: Wire.encode(value),
                headers: [KafkaHeader(key: WireHeaders.kind, string: kind.rawValue), KafkaHeader(key: WireHeaders.version, string: String(Wire.version))])
        }
        switch effect {
        case .dispatch(let command), .compensate(let command):
            pools.insert(command.pool)
            let message = CommandMessage(command, replyTo: ReplyTo(topic: names.events, partition: partition))
            var r = record(names.commands(command.pool), message.kind, message, key: key)
            // One command partition per events partition: a transaction then touches few partitions (each
            // gets a commit marker), and the pool's members still share the work evenly.
            r.partition = commandTopics.partition(for: names.commands(command.pool), eventsPartition: partition)
            return [r]
        case .createTask(let task):
            let r = TaskRecord(taskID: task.taskID, status: .open, task: task, decidedBy: nil, partition: partition, at: now)
            return [record(names.tasks, .task, r, key: Data(task.taskID.utf8))]
        case .closeTask(let taskID, let resolution, let by):
            let status: TaskRecord.Status =
                switch resolution {
                case .approved: .approved
                case .rejected: .rejected
                case .timedOut: .timedOut
                case .escalated: .escalated
                case .cancelled: .cancelled
                }
            let r = TaskRecord(taskID: taskID, status: status, task: nil, decidedBy: by, partition: partition, at: now)
            return [record(names.tasks, .task, r, key: Data(taskID.utf8))]
        case .notify(let notification):
            return [record(names.notifications, .notification, NotificationRecord(notification: notification, at: now), key: key)]
        case .alert(let alert):
            return [record(names.alerts, .alert, AlertRecord(alert: AlertMessage(alert), at: now), key: key)]
        case .armTimer, .cancelTimer, .completed, .failed, .suspended, .cancelled, .purge:
            return []
        }
    }
}

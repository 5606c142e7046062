import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import HeapModule
import Logging
import Metrics
import Tracing

struct TimerEntry: Comparable, Hashable {
    var dueAt: Timestamp
    var instanceID: String
    var key: TimerKey

    static func < (a: TimerEntry, b: TimerEntry) -> Bool {
        if a.dueAt != b.dueAt { return a.dueAt < b.dueAt }
        if a.instanceID != b.instanceID { return a.instanceID < b.instanceID }
        return a.key.order < b.key.order
    }
}

extension TimerKey {
    /// A total order without building strings (a heap compares often).
    var order: (Int, Int, Int, Int) {
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
enum RecordOrigin: Hashable, CustomStringConvertible {
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

    var instanceID: String? {
        switch self {
        case .snapshot(let id), .output(let id, _, _), .command(let id, _, _, _, _), .task(let id, _), .alert(let id), .notification(let id), .tombstone(let id),
            .subscription(let id, _, _):
            id
        case .deadLetter, .mailbox: nil
        }
    }

    var description: String {
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
struct OutgoingRecord {
    var record: ProducerRecord
    var origin: RecordOrigin

    /// What the record weighs against the broker's limit (key, value, headers, and a batch's overhead).
    var size: Int {
        (record.key?.count ?? 0) + (record.value?.count ?? 0) + record.headers.reduce(0) { $0 + $1.key.utf8.count + ($1.value?.count ?? 0) + 8 } + 64
    }
}

/// One events partition this coordinator owns: its instances, their timers, and its transactional producer.
/// Only its runner's task uses it.
final class OwnedPartition {
    let partition: Int32
    let context: CoordinatorContext
    let producer: KafkaProducer
    let partitionCount: Int
    var instances: InstanceStore
    /// The mailboxes whose key is on this partition: records from business topics and the attempts waiting for them.
    var mailboxes: [String: Mailbox]
    var timers = Heap<TimerEntry>()
    var scheduled = Set<TimerEntry>()
    /// Timers sent to the events topic and not yet seen back, by instance.
    var fired: [String: Set<TimerEntry>] = [:]
    /// The events offset of the next record to process (nil until the first one, when nothing was committed).
    var nextOffset: Int64?
    /// When the running attempts' commands were sent (for `baton_step_duration_seconds`).
    var dispatches = Dispatches()
    var lagReportedAt = ContinuousClock.now - .seconds(1)
    /// Since when its timers are held until the events queued when it was taken are applied (nil: released).
    var timersHeld: ContinuousClock.Instant? = .now
    /// Timer firings that failed in a row, and until when the next waits.
    var timerFailures = 0
    var timersBlockedUntil = ContinuousClock.now

    var configuration: CoordinatorConfiguration { context.configuration }
    var names: TopicNames { context.configuration.names }
    var logger: Logger { context.logger }
    var metrics: CoordinatorMetrics { context.metrics }

    init(partition: Int32, context: CoordinatorContext, producer: KafkaProducer, rebuilt: Rebuilt, nextOffset: Int64?) {
        self.partition = partition
        self.context = context
        self.producer = producer
        self.partitionCount = rebuilt.partitionCount
        self.instances = rebuilt.instances
        self.mailboxes = rebuilt.mailboxes
        self.nextOffset = nextOffset
        scheduled = Set(rebuilt.timers)
        timers = Heap(scheduled)
        for (key, count) in rebuilt.counts { context.metrics.count(workflowID: key.workflowID, status: key.status, by: Double(count)) }
        context.metrics.partitionsOwned.increment()
        reportGauges()
    }

    // MARK: Taking the partition

    /// Fences the previous owner (its open transaction is aborted), then rebuilds the partition's instances
    /// from the same partition of the state and outputs topics, read to their end, before a single event is
    /// processed. Reports its progress; takes as long as it takes.
    static func take(_ partition: Int32, context: CoordinatorContext) async throws -> OwnedPartition {
        let names = context.configuration.names
        let logger = context.logger
        var producerConfiguration = KafkaProducerConfiguration(client: context.configuration.client)
        producerConfiguration.transactionalID = "\(names.coordinatorGroup).\(partition)"
        producerConfiguration.linger = .milliseconds(1)
        let producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        do {
            try await producer.initTransactions()
            // After the fence: what the group committed is exactly what committed transactions wrote.
            let committed = try await context.consumer.committed([TopicPartition(names.events, partition)]).first?.offset ?? -1
            let rebuilt = try await rebuild(partition, committed: committed, context: context)
            return OwnedPartition(partition: partition, context: context, producer: producer, rebuilt: rebuilt, nextOffset: committed >= 0 ? committed : nil)
        } catch {
            await producer.close(timeout: .seconds(1))
            throw error
        }
    }

    /// The instances of a partition as committed transactions left them: snapshots from the state topic with
    /// their outputs from the outputs topic put back. Records whose `baton-events-offset` header is past the
    /// group's committed offset come from transactions that never committed (visible on brokers that do not
    /// hide aborted records) and are left out.
    struct Rebuilt {
        struct StatusKey: Hashable {
            var workflowID: String
            var status: InstanceStatus
        }
        var instances: InstanceStore
        var mailboxes: [String: Mailbox] = [:]
        var partitionCount: Int
        /// Every armed timer of the instances.
        var timers: [TimerEntry]
        /// How many instances of each workflow are in each status.
        var counts: [StatusKey: Int]
    }

    /// The instances of a partition as committed transactions left them. Snapshots are kept as read (the last
    /// of each instance) and decoded once at the end.
    static func rebuild(_ partition: Int32, committed: Int64, context: CoordinatorContext) async throws -> Rebuilt {
        let started = ContinuousClock.now
        var reading = try await read(partition, committed: committed, context: context, started: started)
        let read = ContinuousClock.now
        context.metrics.rebuildRecords.increment(by: reading.records)
        let rebuilt = assemble(reading, partition: partition, context: context)
        context.logger.info(
            "took partition",
            metadata: [
                "partition": "\(partition)", "instances": "\(rebuilt.instances.count)", "mailboxes": "\(rebuilt.mailboxes.count)",
                "records": "\(reading.records)", "uncommitted": "\(reading.uncommitted)",
                "ms": "\((ContinuousClock.now - started).inMilliseconds)", "read_ms": "\((read - started).inMilliseconds)",
            ])
        context.metrics.rebuildDuration.record(duration: ContinuousClock.now - started)
        // The snapshots as read and their decoded forms were a multiple of what is kept.
        reading = RebuildReading(partitionCount: 0)
        ProcessMemory.releaseFreed()
        return rebuilt
    }

    /// What a rebuild read of a partition's state, outputs and mailboxes: the last record of each key.
    struct RebuildReading {
        var partitionCount: Int
        /// The last snapshot of each instance, as read: decoded once, at the end. (Decoding after each poll,
        /// while librdkafka fetches more, was slower here: the broker and the decoding share the cores.)
        var snapshots: [String: (value: Data, offset: Int64)] = [:]
        var outputs: [String: OutputRecord] = [:]
        var mailboxes: [String: Mailbox] = [:]
        var records = 0
        /// Records of transactions that never committed (past the group's committed offset), left out.
        var uncommitted = 0

        mutating func take(_ m: KafkaMessage, committed: Int64, names: TopicNames, logger: Logger) {
            records += 1
            guard let key = m.keyString else { return }
            if let header = m.header(WireHeaders.eventsOffset), let offset = Int64(String(decoding: header, as: UTF8.self)), offset > max(committed, 0) {
                uncommitted += 1
                return
            }
            if m.topic == names.state {
                snapshots[key] = m.value.map { ($0, m.offset) }
            } else if m.topic == names.mailboxes {
                guard let value = m.value else {
                    mailboxes[key] = nil
                    return
                }
                do { mailboxes[key] = try Wire.decode(MailboxSnapshot.self, from: value).mailbox } catch {
                    logger.error("skipping an unreadable mailbox record", metadata: ["offset": "\(m.partition)/\(m.offset)", "error": "\(error)"])
                }
            } else {
                guard let value = m.value else {
                    outputs[key] = nil
                    return
                }
                do { outputs[key] = try OutputRecord.fastDecode(value) ?? Wire.decode(OutputRecord.self, from: value) } catch {
                    logger.error("skipping an unreadable output record", metadata: ["offset": "\(m.partition)/\(m.offset)", "error": "\(error)"])
                }
            }
        }
    }

    /// Reads the partition of the state, outputs and mailboxes topics to its end (read_committed), reporting its
    /// progress.
    static func read(_ partition: Int32, committed: Int64, context: CoordinatorContext, started: ContinuousClock.Instant) async throws -> RebuildReading {
        let names = context.configuration.names
        let logger = context.logger
        var readerConfiguration = KafkaConsumerConfiguration(client: context.configuration.client, groupID: nil)
        readerConfiguration.reportPartitionEOF = true
        readerConfiguration.isolationLevel = .readCommitted
        // Read to the end as fast as the broker gives it: large fetches (a few round trips for a million records).
        readerConfiguration.additional["max.partition.fetch.bytes"] = String(16 << 20)
        readerConfiguration.additional["fetch.max.bytes"] = String(64 << 20)
        readerConfiguration.additional["queued.max.messages.kbytes"] = String(256 << 10)
        let reader = try KafkaConsumer(configuration: readerConfiguration, logger: logger)
        do {
            let metadata = try await reader.metadata()
            for topic in [names.state, names.outputs, names.mailboxes] where metadata.topics[topic] == nil {
                throw KafkaError(code: .unknownTopicOrPartition, message: "topic \(topic) does not exist; run `baton topics apply` first")
            }
            var reading = RebuildReading(partitionCount: metadata.topics[names.events]?.partitionCount ?? 0)
            let sources = [TopicPartition(names.state, partition), TopicPartition(names.outputs, partition), TopicPartition(names.mailboxes, partition)]
            try reader.assign(sources.map { TopicPartitionOffset($0, offset: TopicPartitionOffset.beginning) })
            var remaining = Set(sources)
            var lastReport = started
            while !remaining.isEmpty {
                for event in try await reader.poll(maxEvents: 5000, timeout: .milliseconds(100)) {
                    switch event {
                    case .message(let m): reading.take(m, committed: committed, names: names, logger: logger)
                    case .partitionEOF(let tp, _): remaining.remove(tp)
                    case .error(let error): logger.warning("rebuilding partition \(partition): \(error)")
                    default: break
                    }
                }
                if ContinuousClock.now - lastReport >= context.configuration.progressInterval {
                    lastReport = .now
                    logger.info(
                        "rebuilding partition",
                        metadata: [
                            "partition": "\(partition)", "records": "\(reading.records)", "instances": "\(reading.snapshots.count)",
                            "s": "\((ContinuousClock.now - started).seconds)",
                        ])
                }
            }
            await reader.close()
            return reading
        } catch {
            await reader.close()
            throw error
        }
    }

    /// The instances as read: each snapshot decoded with its outputs put back and its retention armed, their
    /// timers and the mailboxes' expiries, and the counts by workflow and status.
    static func assemble(_ reading: RebuildReading, partition: Int32, context: CoordinatorContext) -> Rebuilt {
        var byInstance: [String: [OutputRecord]] = [:]
        for record in reading.outputs.values { byInstance[record.instanceID, default: []].append(record) }
        var rebuilt = Rebuilt(instances: InstanceStore(), mailboxes: reading.mailboxes, partitionCount: reading.partitionCount, timers: [], counts: [:])
        for (key, mailbox) in reading.mailboxes {
            if let due = mailbox.nextExpiry { rebuilt.timers.append(TimerEntry(dueAt: due, instanceID: key, key: TimerKey(kind: .mailbox))) }
        }
        for (id, snapshot) in reading.snapshots {
            var state: InstanceState
            do { state = try StateCodec.decode(snapshot.value) } catch {
                context.logger.error("skipping an unreadable state record", metadata: ["offset": "\(partition)/\(snapshot.offset)", "error": "\(error)"])
                continue
            }
            let workflow = context.registry.workflow(state.workflowID, version: state.version)
            if let workflow {
                let stored = (byInstance[id] ?? []).compactMap { r in
                    workflow.index[r.step].map { StoredOutput(step: $0, item: r.item, attempt: r.attempt, output: r.output) }
                }
                state.restore(outputs: stored, workflow: workflow)
            } else {
                context.logger.error("instance \(id) runs \(state.workflowID) v\(state.version), which is not registered; its outputs are not restored")
            }
            state = Saga.armingRetention(state, workflow: workflow, settings: context.settings)
            for timer in state.timers { rebuilt.timers.append(TimerEntry(dueAt: timer.dueAt, instanceID: id, key: timer.key)) }
            rebuilt.counts[Rebuilt.StatusKey(workflowID: state.workflowID, status: state.status), default: 0] += 1
            rebuilt.instances.insert(state)
        }
        return rebuilt
    }

    func release() async {
        await producer.close(timeout: .seconds(1))
        // What this partition counted is now another coordinator's to count.
        instances.forEachStatus { workflowID, status in metrics.count(workflowID: workflowID, status: status, by: -1) }
        metrics.partitionsOwned.decrement()
        metrics.timers(String(partition)).record(0)
        metrics.lag.forget(TopicPartition(names.events, partition))
    }

    /// The partition's timers and lag (the lag at most once a second: it asks librdkafka).
    func reportGauges() {
        metrics.timers(String(partition)).record(timers.count)
        guard ContinuousClock.now - lagReportedAt >= .seconds(1) else { return }
        lagReportedAt = .now
        let tp = TopicPartition(names.events, partition)
        if let high = context.consumer.cachedHighWatermark(tp) {
            metrics.lag.record(tp, lag: high - (nextOffset ?? 0))
        }
    }

    // MARK: Timers

    var nextDue: Timestamp? { timers.min?.dueAt }

    func schedule(_ state: InstanceState) {
        for timer in state.timers {
            let entry = TimerEntry(dueAt: timer.dueAt, instanceID: state.instanceID, key: timer.key)
            if fired[state.instanceID]?.contains(entry) != true, scheduled.insert(entry).inserted { timers.insert(entry) }
        }
    }

    /// A mailbox's expiry timer, when it has something that expires.
    func schedule(mailbox key: String) {
        guard let due = mailboxes[key]?.nextExpiry else { return }
        let entry = TimerEntry(dueAt: due, instanceID: key, key: TimerKey(kind: .mailbox))
        if fired[key]?.contains(entry) != true, scheduled.insert(entry).inserted { timers.insert(entry) }
    }

    /// Timers that are due and still armed.
    func dueTimers(at now: Timestamp) -> [TimerEntry] {
        var due: [TimerEntry] = []
        while let next = timers.min, next.dueAt <= now {
            timers.removeMin()
            scheduled.remove(next)
            if next.key.kind == .mailbox {
                if mailboxes[next.instanceID]?.nextExpiry == next.dueAt { due.append(next) }
            } else if instances[next.instanceID]?.timers.contains(where: { $0.key == next.key && $0.dueAt == next.dueAt }) == true {
                due.append(next)
            }
        }
        return due
    }

    /// Sends due timers to the events partition, where they are applied like any event, in a transaction
    /// (so that every state change is tied to a committed events offset). A timer that could not be sent is
    /// scheduled again; returns how many could not.
    func fire(_ due: [TimerEntry]) async -> Int {
        let side = context.sideProducer
        let names = self.names
        let partition = self.partition
        let results = await withTaskGroup(of: (TimerEntry, (any Error)?).self) { group in
            for entry in due {
                let record = ProducerRecord(
                    topic: names.events, partition: partition, key: Data(entry.instanceID.utf8),
                    value: Wire.encode(TimerMessage(instanceID: entry.instanceID, timer: entry.key, dueAt: entry.dueAt)),
                    headers: Wire.headers(.timerFired))
                group.addTask {
                    do {
                        try await side.send(record)
                        return (entry, nil)
                    } catch {
                        return (entry, error)
                    }
                }
            }
            var results: [(TimerEntry, (any Error)?)] = []
            for await result in group { results.append(result) }
            return results
        }
        var failed = 0
        for (entry, error) in results {
            if let error {
                failed += 1
                logger.warning("could not fire a timer; it fires again", metadata: ["instance": "\(entry.instanceID)", "timer": "\(entry.key)", "error": "\(error)"])
                if scheduled.insert(entry).inserted { timers.insert(entry) }
            } else {
                fired[entry.instanceID, default: []].insert(entry)
            }
        }
        return failed
    }

    // MARK: Writing

    /// Writes the records and the consumed offsets in one transaction. If it fails because the broker refused
    /// some records, throws `RecordsRefused` naming them.
    func commit(_ outgoing: [OutgoingRecord], messages: [KafkaMessage]) async throws {
        let writer = TransactionWriter(producer: producer, consumer: context.consumer, logger: logger)
        let began = ContinuousClock.now
        let t: TransactionTimings
        do {
            t = try await writer.write(outgoing.map { ($0.record, $0.origin) }, consumed: messages.last?.nextOffset) {
                // Frozen (SIGSTOP, a long pause) since the batch was taken, or told by the poll loop that the process
                // was? Then the partition may be someone else's by now: write nothing, read again.
                try context.writeGate.check(since: began, limit: configuration.sessionTimeout / 3)
            }
        } catch {
            metrics.transactions("aborted").increment()
            throw error
        }
        metrics.transactions("committed").increment()
        metrics.transaction("produce").record(duration: t.produce)
        metrics.transaction("offsets").record(duration: t.offsets)
        metrics.transaction("commit").record(duration: t.commit)
        metrics.transaction("total").record(duration: t.total)
        logger.debug(
            "committed",
            metadata: [
                "partition": "\(partition)", "events": "\(messages.count)", "records": "\(outgoing.count)",
                "ms": "\(t.total.inMilliseconds)", "produce_ms": "\(t.produce.inMilliseconds)",
                "offsets_ms": "\(t.offsets.inMilliseconds)", "commit_ms": "\(t.commit.inMilliseconds)",
            ])
    }

    /// An instance one of whose records cannot be written: the effects that let it go on without it. A command
    /// that cannot be sent fails its attempt for good (the failure path runs: compensations, alert); a
    /// compensation's fails that compensation attempt (it is retried, then the instance is suspended with a
    /// critical alert); an alert or notification is dropped. Anything else (the snapshot, an output, a task), or
    /// an instance that keeps producing records that cannot be written (`escalate`), ends the instance at once
    /// as failed, with a snapshot reduced to fit.
    func goOnWithout(_ origin: RecordOrigin, why: String, instanceID id: String, now: Timestamp, escalate: Bool) -> [SagaEffect] {
        logger.error("a record cannot be written; its instance goes on without it", metadata: ["instance": "\(id)", "record": "\(origin)", "reason": "\(why)"])
        guard let state = instances[id], let workflow = context.registry.workflow(state.workflowID, version: state.version) else { return [] }
        var event: SagaEvent?
        switch origin {
        case .command(_, let step, let item, let attempt, let compensation) where !escalate:
            let error = "\(origin) cannot be written: \(why)"
            event = compensation
                ? .compensationFailed(step: step, item: item, attempt: attempt, error: error)
                : .stepFailed(step: step, item: item, attempt: attempt, error: error, retryable: false)
        case .alert, .notification, .deadLetter, .tombstone, .mailbox:
            return []
        case .subscription:
            // The attempt waits without its subscription: it times out and takes its failure path.
            return []
        default:
            break
        }
        if let event {
            let transition = Saga.apply(workflow, to: state, event: event, now: now, settings: context.settings)
            if case .applied = transition.outcome {
                instances[id] = transition.state
                return transition.effects
            }
        }
        let reason = "stopped by the coordinator: \(origin) cannot be written (\(why))"
        let transition = Saga.abandon(workflow, state, reason: reason, now: now, settings: context.settings)
        instances[id] = transition.state.minimized
        return transition.effects
    }

    /// The records an instance's changes in this batch become: its snapshot (or tombstones, when purged), the
    /// outputs added since `original`, and one record for each effect that writes one.
    func records(for id: String, effects: [SagaEffect], original: InstanceState?, now: Timestamp, eventsOffset: String) -> [OutgoingRecord] {
        let key = Data(id.utf8)
        let stateHeaders = [KafkaHeader(key: WireHeaders.eventsOffset, string: eventsOffset), KafkaHeader(key: WireHeaders.coordinator, string: configuration.identity)]
        var out: [OutgoingRecord] = []
        guard let state = instances[id] else { return [] }
        let workflow = context.registry.workflow(state.workflowID, version: state.version)
        if effects.contains(.purge) {
            // Everything stored for the instance goes: its snapshot, its outputs, its tasks.
            let source = original ?? state
            out.append(OutgoingRecord(record: ProducerRecord(topic: names.state, partition: partition, key: key, value: nil, headers: stateHeaders), origin: .tombstone(id)))
            for o in source.storedOutputs {
                let step = workflow.map { $0.steps[o.step].id } ?? String(o.step)
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(
                            topic: names.outputs, partition: partition, key: Data(OutputRecord.key(instanceID: id, step: step, item: o.item).utf8), value: nil, headers: stateHeaders),
                        origin: .tombstone(id)))
            }
            if let workflow {
                for (s, step) in workflow.steps.enumerated() where step.isHumanTask {
                    for attempt in stride(from: 1, through: source.steps[s].units.map(\.attempt).max() ?? 0, by: 1) {
                        let taskID = "\(id)/\(step.id)/\(attempt)"
                        out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(taskID.utf8), value: nil), origin: .tombstone(id)))
                    }
                }
            }
            return out
        }
        out.append(
            OutgoingRecord(
                record: ProducerRecord(topic: names.state, partition: partition, key: key, value: StateCodec.encodeSnapshot(state), headers: stateHeaders),
                origin: .snapshot(id)))
        for o in state.outputsAdded(since: original) {
            let step = workflow.map { $0.steps[o.step].id } ?? String(o.step)
            let record = OutputRecord(instanceID: id, step: step, item: o.item, attempt: o.attempt, output: o.output)
            out.append(
                OutgoingRecord(
                    record: ProducerRecord(topic: names.outputs, partition: partition, key: Data(record.key.utf8), value: Wire.encode(record), headers: stateHeaders + Wire.headers(.output)),
                    origin: .output(id, step: step, item: o.item)))
        }
        for effect in effects {
            switch effect {
            case .dispatch(let command), .compensate(let command):
                let message = CommandMessage(command, replyTo: ReplyTo(topic: names.events, partition: partition), token: configuration.security.token(for: command))
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(topic: names.commands(command.pool), key: key, value: Wire.encode(message), headers: Wire.headers(message.kind)),
                        origin: .command(id, step: command.step, item: command.item, attempt: command.attempt, compensation: command.isCompensation)))
            case .createTask(let task), .updateTask(let task):
                let r = TaskRecord(taskID: task.taskID, status: .open, task: task, decidedBy: nil, partition: partition, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(task.taskID.utf8), value: Wire.encode(r), headers: Wire.headers(.task)), origin: .task(id, taskID: task.taskID)))
            case .closeTask(let task, let resolution, let by):
                let r = TaskRecord(taskID: task.taskID, status: TaskRecord.Status(resolution), task: task, decidedBy: by, partition: partition, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(task.taskID.utf8), value: Wire.encode(r), headers: Wire.headers(.task)), origin: .task(id, taskID: task.taskID)))
            case .notify(let notification):
                let r = NotificationRecord(notification: notification, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.notifications, key: key, value: Wire.encode(r), headers: Wire.headers(.notification)), origin: .notification(id)))
            case .alert(let alert):
                let r = AlertRecord(alert: AlertMessage(alert), at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.alerts, key: key, value: Wire.encode(r), headers: Wire.headers(.alert)), origin: .alert(id)))
            case .subscribe(let subscription), .unsubscribe(let subscription):
                let kind: Wire.Kind = if case .subscribe = effect { .eventSubscribed } else { .eventUnsubscribed }
                let message = SubscriptionMessage(kind: kind, subscription: subscription)
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(
                            topic: names.events, partition: KafkaPartitioner.partition(forKey: subscription.mailbox, partitionCount: partitionCount),
                            key: Data(subscription.mailbox.utf8), value: Wire.encode(message), headers: Wire.headers(message.kind)),
                        origin: .subscription(id, step: subscription.step, attempt: subscription.attempt)))
            case .armTimer, .cancelTimer, .completed, .failed, .suspended, .cancelled, .purge:
                break
            }
        }
        return out
    }
}

extension OwnedPartition {
    /// The records of the mailboxes a batch changed: each one's snapshot on the mailboxes topic (a tombstone once
    /// it is empty) and the records it delivers to waiting attempts. One that cannot be written (larger than the
    /// broker takes, or refused) is left out with an error: the attempts it was for time out and take their
    /// failure path.
    func mailboxRecords(_ keys: [String], effects: [String: [MailboxEffect]], eventsOffset: String, refused: [RecordOrigin: String]) -> [OutgoingRecord] {
        let headers = [KafkaHeader(key: WireHeaders.eventsOffset, string: eventsOffset), KafkaHeader(key: WireHeaders.coordinator, string: configuration.identity)]
        var out: [OutgoingRecord] = []
        for key in keys {
            let value = mailboxes[key].map { Wire.encode(MailboxSnapshot(mailbox: $0)) }
            out.append(
                OutgoingRecord(
                    record: ProducerRecord(topic: names.mailboxes, partition: partition, key: Data(key.utf8), value: value, headers: headers + (value == nil ? [] : Wire.headers(.mailbox))),
                    origin: .mailbox(key)))
            for effect in effects[key] ?? [] {
                switch effect {
                case .deliver(let subscription, let record):
                    let message = EventReceivedMessage(instanceID: subscription.instanceID, step: subscription.step, attempt: subscription.attempt, mailbox: key, event: record)
                    out.append(
                        OutgoingRecord(
                            record: ProducerRecord(
                                topic: names.events, partition: KafkaPartitioner.partition(forKey: subscription.instanceID, partitionCount: partitionCount),
                                key: Data(subscription.instanceID.utf8), value: Wire.encode(message), headers: Wire.headers(.eventReceived)),
                            origin: .mailbox(key)))
                case .dropped, .expired:
                    break
                }
            }
        }
        return out.filter { r in
            let why = refused[r.origin] ?? (r.size > configuration.maxRecordBytes ? "\(r.size) bytes, more than the limit of \(configuration.maxRecordBytes)" : nil)
            guard let why else { return true }
            logger.error("a mailbox record cannot be written; it is left out", metadata: ["record": "\(r.origin)", "reason": "\(why)"])
            return false
        }
    }
}

extension TaskRecord.Status {
    init(_ resolution: TaskResolution) {
        switch resolution {
        case .approved: self = .approved
        case .rejected: self = .rejected
        case .timedOut: self = .timedOut
        case .escalated: self = .escalated
        case .cancelled: self = .cancelled
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

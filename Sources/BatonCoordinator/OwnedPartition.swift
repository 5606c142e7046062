import BatonCore
import BatonKafka
import BatonPlanning
import BatonRuntime
import BatonWire
import Foundation
import HeapModule
import Logging
import Metrics
import Tracing

/// One events partition this coordinator owns: its instances, their timers, and its transactional producer.
/// Only its runner's task uses it.
final class OwnedPartition {
    let partition: Int32
    let context: CoordinatorContext
    let producer: KafkaProducer
    let partitionCount: Int
    /// Its instances and mailboxes, and how a batch changes them.
    var book: PartitionBook
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
        let configuration = context.configuration
        let registry = context.registry
        let rules = PlanningRules(
            partition: partition, partitionCount: rebuilt.partitionCount, names: configuration.names, identity: configuration.identity,
            settings: context.settings, security: configuration.security, maxRecordBytes: configuration.maxRecordBytes, logger: context.logger,
            tracer: context.tracer, definitions: { id, version in registry.workflow(id, version: version) })
        self.book = PartitionBook(rules: rules, instances: rebuilt.instances, mailboxes: rebuilt.mailboxes)
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
            "rebuilt partition",
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
                            "s": "\((ContinuousClock.now - started).inSeconds)",
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
        book.instances.forEachStatus { workflowID, status in metrics.count(workflowID: workflowID, status: status, by: -1) }
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
        guard let due = book.mailboxes[key]?.nextExpiry else { return }
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
                if book.mailboxes[next.instanceID]?.nextExpiry == next.dueAt { due.append(next) }
            } else if book.instances[next.instanceID]?.timers.contains(where: { $0.key == next.key && $0.dueAt == next.dueAt }) == true {
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
}

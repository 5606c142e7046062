import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import CoreMetrics
import Foundation
import Logging
import Metrics
import Synchronization

/// The trigger service as a partition handler for one consumer session: each business partition it is given
/// has a transactional producer (`<ns>.triggers.<topic>.<partition>`: initialising it fences whoever had the
/// partition before and ends that owner's open transaction), and each batch of its records is turned into
/// records by the plan in force and written in one transaction with the consumed offsets (read-process-write).
///
/// No record is skipped: a record is only ever behind the committed offset once its transaction committed. A
/// batch whose transaction failed is written again; a fenced producer, or failures that go on, make the runner
/// take the partition anew and read again from the offset the group committed.
struct TriggerHandler: PartitionHandler {
    let context: TriggerContext
    /// The group member: its group metadata goes into every transaction.
    let consumer: KafkaConsumer
    /// The topics the session subscribed to: when definitions name others, the session ends.
    let topics: Set<String>
    let settings: PartitionSettings
    let isStopping: @Sendable () -> Bool
    let session = Session()

    /// What the poll loop's hooks keep between rounds.
    final class Session: Sendable {
        /// Consumer errors logged already (a topic that does not exist yet is reported at every metadata refresh).
        let warned = Mutex(Set<String>())
        /// When new definitions were last looked at.
        let planCheckedAt = Mutex(ContinuousClock.now)
    }

    /// Failures in a row after which the producer is replaced even if it reports no fatal error (a broker that
    /// closes the connection of a fenced producer instead of telling it, as Tansu does, leaves it retrying).
    static let retakeAfterFailures = 4

    init(context: TriggerContext, consumer: KafkaConsumer, topics: Set<String>, isStopping: @escaping @Sendable () -> Bool) {
        self.context = context
        self.consumer = consumer
        self.topics = topics
        self.isStopping = isStopping
        let c = context.configuration
        settings = PartitionSettings(
            maxBatch: c.maxBatch, idleWait: .milliseconds(100), maxBacklog: c.maxBacklog, maxPollInterval: c.maxPollInterval, stopTimeout: c.stopTimeout,
            gapRereads: context.gapRereads,
            retry: RetryPolicy(backoff: Backoff(max: c.maxBackoff), retakeAfterFailures: Self.retakeAfterFailures),
            name: "triggers")
    }

    var logger: Logger { context.logger }
    var configuration: TriggerConfiguration { context.configuration }
    var metrics: TriggerMetrics { context.metrics }

    /// A business partition as taken.
    struct Partition {
        let tp: TopicPartition
        let producer: KafkaProducer
        /// The offset after the last committed batch (nil: nothing committed yet).
        var next: Int64?
        var lagReportedAt = ContinuousClock.now - .seconds(1)
    }

    func take(_ tp: TopicPartition, inbox: PartitionInbox) async throws -> Partition {
        var c = KafkaProducerConfiguration(client: configuration.client)
        c.transactionalID = "\(configuration.names.triggersGroup).\(tp.topic).\(tp.partition)"
        c.linger = .milliseconds(1)
        let producer = try KafkaProducer(configuration: c, logger: logger)
        do {
            try await producer.initTransactions()
            // After the fence the group's committed offset is what committed transactions consumed.
            let committed = try await consumer.committed([tp]).first?.offset ?? -1
            return Partition(tp: tp, producer: producer, next: committed >= 0 ? committed : nil)
        } catch {
            await producer.close(timeout: .seconds(1))
            throw error
        }
    }

    func nextOffset(_ partition: Partition) -> Int64? { partition.next }

    func release(_ partition: Partition) async {
        await partition.producer.close(timeout: .seconds(2))
        metrics.lag.forget(partition.tp)
    }

    /// Reports the partition's lag (at most once a second: it asks librdkafka).
    func between(_ partition: inout Partition, inbox: PartitionInbox) async -> Duration {
        if ContinuousClock.now - partition.lagReportedAt >= .seconds(1) {
            partition.lagReportedAt = .now
            if let high = consumer.cachedHighWatermark(partition.tp), let next = partition.next { metrics.lag.record(partition.tp, lag: high - next) }
        }
        return settings.idleWait
    }

    func newAttempt() {}

    /// Turns the batch into records and writes them with the consumed offset in one transaction; counts what it
    /// did once it committed. On failure the transaction is aborted and nothing of it counts.
    func commit(_ batch: [KafkaMessage], to partition: inout Partition, attempt: inout Void) async throws {
        guard let last = batch.last else { return }
        let began = ContinuousClock.now
        let plan = context.plan.current
        let names = configuration.names
        let now = configuration.clock()
        let outcomes = batch.map { plan.process($0, names: names, now: now) }
        let records = outcomes.flatMap(\.records).enumerated().map { ($0.element, $0.offset) }
        do {
            _ = try await TransactionWriter(producer: partition.producer, consumer: consumer, logger: logger).write(records, consumed: last.nextOffset)
        } catch {
            metrics.transactions("aborted").increment()
            throw error
        }
        partition.next = last.offset + 1
        metrics.transactions("committed").increment()
        metrics.batch.record(duration: ContinuousClock.now - began)
        for outcome in outcomes {
            if let reason = outcome.deadLetter {
                logger.warning("dead letter", metadata: ["reason": "\(reason)"])
                metrics.deadLetters.record(.unreadable)
            }
            for label in outcome.labels { metrics.records(partition.tp.topic, label).increment() }
            for workflow in outcome.started { metrics.starts(workflow).increment() }
        }
        logger.debug(
            "committed",
            metadata: [
                "partition": "\(partition.tp)", "records": "\(batch.count)", "written": "\(records.count)",
                "ms": "\((ContinuousClock.now - began).inMilliseconds)",
            ])
    }

    func failure(_ error: any Error, of partition: Partition, attempt: inout Void) -> CommitFailure {
        if let fatal = (error as? KafkaError).flatMap({ $0.isFatal ? $0 : nil }) ?? partition.producer.fatalError { return .takeAnew(reason: "\(fatal)") }
        return .backOff
    }

    func alert(_ tp: TopicPartition, severity: AlertSeverity, _ message: String) async -> Bool {
        await context.alerts.send(key: "triggers/\(tp)", partition: nil, severity: severity, message)
    }

    // MARK: The poll loop's hooks

    func handles(_ tp: TopicPartition) -> Bool { topics.contains(tp.topic) }

    func consumerError(_ error: KafkaError) {
        if session.warned.withLock({ $0.insert(error.message).inserted }) { logger.warning("consumer: \(error)") }
    }

    /// New definitions: at most one look a second (it asks the broker for the events topic's partitions). The
    /// session ends when they name other topics.
    func roundEnded() async -> Bool {
        guard context.registry.generation != context.plan.current.generation else { return true }
        let due = session.planCheckedAt.withLock { at in
            guard ContinuousClock.now - at >= .seconds(1) else { return false }
            at = .now
            return true
        }
        guard due, let plan = await context.currentPlan() else { return true }
        if Set(plan.topicNames) != topics {
            logger.info("definitions name other topics; subscribing again", metadata: ["topics": "\(plan.topicNames.joined(separator: ","))"])
            return false
        }
        for (topic, why) in plan.refused where context.plan.current.refused[topic] != why { logger.error("not reading topic \(topic): \(why)") }
        context.plan.set(plan)
        metrics.prepare(plan)
        return true
    }

    /// When the session ends to subscribe again, each runner ends first, however long it takes.
    var stopsWithinTimeout: Bool { isStopping() }
}

import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

public struct TriggerConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    public var names: TopicNames
    /// At most this many records of a partition go into one transaction.
    public var maxBatch = 1000
    public var sessionTimeout: Duration = .seconds(10)
    public var maxPollInterval: Duration = .seconds(30)
    /// A partition whose transactions keep failing backs off up to this long between tries.
    public var maxBackoff: Duration = .seconds(10)
    /// Records waiting for a partition's transaction beyond this pause its fetching until it catches up.
    public var maxBacklog = 10_000
    /// How long a stopping service waits for its partitions to end their transactions; those still ending then
    /// (the broker does not answer) are left to their transaction timeout (docs/deploy.md).
    public var stopTimeout: Duration = .seconds(12)
    /// How often the consumer looks for topics that did not exist yet (a trigger registered before its topic).
    public var topicRefresh: Duration = .seconds(5)
    /// Whether to read a partition again when its offsets jump (see `GapRereads`): on Tansu, a producer's later
    /// batch can be readable before an earlier one.
    public var gapRereads = GapRereads.auto
    /// Overrides the clock (milliseconds since the epoch); for tests that move time.
    public var clock: @Sendable () -> Timestamp = { WallClock.millis() }
    /// Where the metrics go (docs/observability.md): the process's, unless a test gives its own.
    public var metricsFactory: any MetricsFactory = MetricsSystem.factory

    public init(client: KafkaClientConfiguration, names: TopicNames) {
        self.client = client
        self.names = names
    }
}

/// `baton triggers`: reads the business topics that the registered definitions name, in the consumer group
/// `<ns>.triggers`, and turns their records into starts (for triggers) and mailbox records (for
/// `wait_for_event` steps) on the events topic. Each partition it is given has a transactional producer of its
/// own (`<ns>.triggers.<topic>.<partition>`, so that whoever takes the partition over fences the previous
/// owner), and each poll's records of a partition are written in one transaction with their consumed offsets.
/// Run several: they share the partitions.
///
/// A record is turned into the same records however often it is read, and the engine counts those once (a
/// duplicate start changes nothing; a mailbox ignores a record id it has seen): so a record starts one instance
/// also when a transaction's records were served although it aborted (Tansu does), or a crashed process's
/// partition is read again by its successor.
public final class TriggerService: Service, Sendable {
    public let configuration: TriggerConfiguration
    let logger: Logger
    let metrics: TriggerMetrics
    let readiness = PartitionReadiness()
    private let stopping = Atomic(false)

    public init(configuration: TriggerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        metrics = TriggerMetrics(group: configuration.names.triggersGroup, factory: configuration.metricsFactory)
    }

    /// Whether the service does its job: it joined its group and has initialised the producer of every business
    /// partition the group gave it (or no definition names a topic to read).
    public var isReady: Bool { readiness.isReady }

    /// Stops as on a graceful shutdown: each partition finishes its transaction, then the group is left.
    public func stop() { stopping.store(true, ordering: .releasing) }

    /// Stopped, or its task cancelled.
    var isStopping: Bool { stopping.load(ordering: .acquiring) || Task.isCancelled }

    public func run() async throws {
        let names = configuration.names
        let registry = try await DefinitionRegistry(client: configuration.client, names: names, logger: logger)
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        let metadata: ClusterMetadata
        do { metadata = try await admin.metadata() } catch {
            await registry.close()
            throw error
        }
        guard metadata.topics[names.events] != nil else {
            await registry.close()
            throw KafkaError(code: .unknownTopicOrPartition, message: "topic \(names.events) does not exist; run `baton topics apply` first")
        }
        let alertsProducer: ResilientProducer
        do {
            var c = KafkaProducerConfiguration(client: configuration.client)
            c.linger = .milliseconds(1)
            alertsProducer = try ResilientProducer(configuration: c, logger: logger)
        } catch {
            await registry.close()
            throw error
        }
        let metrics = self.metrics
        let context = TriggerContext(
            configuration: configuration, registry: registry, admin: admin, logger: logger, metrics: metrics,
            gapRereads: configuration.gapRereads.enabled(clusterID: metadata.clusterID),
            alerts: EngineAlerts(
                producer: alertsProducer, topic: names.alerts, logger: logger, clock: configuration.clock, count: { metrics.alerts($0).increment() }))
        logger.info("triggers started", metadata: ["group": "\(names.triggersGroup)", "events": "\(names.events)"])
        do {
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { await registry.follow() }
                    await self.sessions(context)
                    group.cancelAll()  // the registry's follower
                }
            } onGracefulShutdown: {
                self.stop()
            }
        } catch {
            readiness.stopped()
            async let closed: Void = registry.close()
            async let flushed: Void = alertsProducer.close(timeout: .seconds(2))
            _ = await (closed, flushed)
            logger.error("triggers stopped: \(error)")
            throw error
        }
        readiness.stopped()
        async let closed: Void = registry.close()
        async let flushed: Void = alertsProducer.close(timeout: .seconds(2))
        _ = await (closed, flushed)
        logger.info("triggers stopped")
    }

    /// One consumer session per set of topics: when definitions name other topics, the session ends (its
    /// partitions finish their transactions) and a new one subscribes to the new set.
    func sessions(_ context: TriggerContext) async {
        var failures = 0
        var reported: [String: String] = [:]
        while !isStopping {
            guard let plan = await context.currentPlan() else {
                failures += 1
                await pause(backoff(failures))
                continue
            }
            for (topic, why) in plan.refused where reported[topic] != why {
                logger.error("not reading topic \(topic): \(why)")
            }
            reported = plan.refused
            context.plan.set(plan)
            metrics.prepare(plan)
            guard !plan.topics.isEmpty else {
                readiness.idle(true)
                // Nothing to read until a definition names a topic.
                while !isStopping, context.registry.generation == plan.generation { await pause(.milliseconds(250)) }
                continue
            }
            readiness.idle(false)
            do {
                try await session(plan.topicNames, context: context)
                failures = 0
            } catch {
                failures += 1
                let delay = backoff(failures)
                logger.error("the triggers' consumer failed; starting it again", metadata: ["in_ms": "\(delay.inMilliseconds)", "error": "\(error)"])
                await pause(delay)
            }
        }
    }

    func backoff(_ failures: Int) -> Duration {
        min(.milliseconds(100) * (1 << min(max(0, failures - 1), 16)), configuration.maxBackoff)
    }

    /// Sleeps, waking early (within 100 ms) when the service is stopped.
    func pause(_ duration: Duration) async {
        let end = ContinuousClock.now + duration
        while !isStopping, ContinuousClock.now < end {
            try? await Task.sleep(for: min(.milliseconds(100), end - .now))
        }
    }

    /// Reads `topics` until the service stops or definitions name another set of topics.
    func session(_ topics: [String], context: TriggerContext) async throws {
        let names = configuration.names
        var consumerConfiguration = KafkaConsumerConfiguration.engineMember(
            client: configuration.client, group: names.triggersGroup, sessionTimeout: configuration.sessionTimeout, maxPollInterval: configuration.maxPollInterval)
        consumerConfiguration.autoOffsetReset = .earliest
        consumerConfiguration.additional["topic.metadata.refresh.interval.ms"] = String(configuration.topicRefresh.inMilliseconds)
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger)
        let result: Result<Void, any Error>
        do {
            try consumer.subscribe(topics)
            logger.info("reading business topics", metadata: ["topics": "\(topics.joined(separator: ","))", "group": "\(names.triggersGroup)"])
            let handler = TriggerHandler(context: context, consumer: consumer, topics: Set(topics), isStopping: { self.isStopping })
            try await withThrowingDiscardingTaskGroup { group in
                try await PartitionGroup(consumer: consumer, handler: handler, readiness: readiness, isStopping: { self.isStopping }).run(in: &group)
                group.cancelAll()  // runners still ending after a stop's time: they stop waiting for the broker
            }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        readiness.left()
        await consumer.close()
        try result.get()
    }
}

/// What every partition of a trigger service shares.
struct TriggerContext: Sendable {
    let configuration: TriggerConfiguration
    let registry: DefinitionRegistry
    let admin: KafkaAdmin
    let logger: Logger
    let metrics: TriggerMetrics
    let gapRereads: Bool
    /// Alerts about the service itself (a partition that cannot commit).
    let alerts: EngineAlerts
    let plan = PlanBox()

    /// The plan of the registry's definitions now, with the events topic's partition count.
    func currentPlan() async -> TriggerPlan? {
        let (workflows, latest, generation) = registry.snapshot()
        let partitions: Int
        do {
            guard let count = try await admin.metadata().topics[configuration.names.events]?.partitionCount, count > 0 else {
                logger.error("topic \(configuration.names.events) has no partitions; waiting for it")
                return nil
            }
            partitions = count
        } catch {
            logger.warning("cannot read the events topic's partition count; trying again: \(error)")
            return nil
        }
        return TriggerPlan(workflows: workflows, latest: latest, namespace: configuration.names.namespace, eventsPartitions: partitions, generation: generation)
    }
}

/// The plan in force, replaced when definitions change.
final class PlanBox: Sendable {
    private let value = Mutex(TriggerPlan(workflows: [], latest: [:], namespace: "", eventsPartitions: 1, generation: -1))
    var current: TriggerPlan { value.withLock { $0 } }
    func set(_ plan: TriggerPlan) { value.withLock { $0 = plan } }
}

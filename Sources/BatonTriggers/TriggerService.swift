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
    let readiness = TriggerReadiness()
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
        let context = TriggerContext(
            configuration: configuration, registry: registry, admin: admin, logger: logger, metrics: metrics, readiness: readiness,
            gapRereads: configuration.gapRereads.enabled(clusterID: metadata.clusterID))
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
            await registry.close()
            logger.error("triggers stopped: \(error)")
            throw error
        }
        readiness.stopped()
        await registry.close()
        logger.info("triggers stopped")
    }

    /// The plan of the registry's definitions now, with the events topic's partition count.
    func currentPlan(_ context: TriggerContext) async -> TriggerPlan? {
        let (workflows, latest, generation) = context.registry.snapshot()
        let partitions: Int
        do {
            guard let count = try await context.admin.metadata().topics[configuration.names.events]?.partitionCount, count > 0 else {
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

    /// One consumer session per set of topics: when definitions name other topics, the session ends (its
    /// partitions finish their transactions) and a new one subscribes to the new set.
    func sessions(_ context: TriggerContext) async {
        var failures = 0
        var reported: [String: String] = [:]
        while !isStopping {
            guard let plan = await currentPlan(context) else {
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
            try await withThrowingDiscardingTaskGroup { group in
                try await self.pollLoop(topics: Set(topics), consumer: consumer, context: context, group: &group)
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

    /// Polls the group and hands each partition's records to its runner; takes and gives up partitions as the
    /// group decides; seeks for runners that must read again; pauses fetching for a runner that falls behind.
    func pollLoop(topics: Set<String>, consumer: KafkaConsumer, context: TriggerContext, group: inout ThrowingDiscardingTaskGroup<any Error>) async throws {
        var runners: [TopicPartition: TriggerPartition] = [:]
        var retiring: [TopicPartition: TriggerPartition] = [:]
        var paused = Set<TopicPartition>()
        var warned = Set<String>()
        var planCheckedAt = ContinuousClock.now
        defer { for runner in runners.values { runner.stop() } }
        while !isStopping {
            let events = try await consumer.poll(maxEvents: configuration.maxBatch, timeout: .milliseconds(50))
            for event in events {
                switch event {
                case .assigned(let partitions):
                    readiness.joined()
                    for tp in partitions where topics.contains(tp.topic) {
                        if let old = runners.removeValue(forKey: tp) {
                            logger.warning("partition \(tp) assigned again while still held; starting over")
                            old.stop()
                            retiring[tp] = old
                        }
                        let runner = TriggerPartition(tp, context: context, consumer: consumer, after: retiring.removeValue(forKey: tp))
                        readiness.taking(tp)
                        runners[tp] = runner
                        paused.remove(tp)
                        group.addTask { await runner.run() }
                    }
                case .revoked(let partitions, let lost):
                    for tp in partitions { readiness.released(tp) }
                    // Each runner ends its transaction (commit or abort) before the partition is let go; not so
                    // long that the group takes this member for dead.
                    let gone = partitions.compactMap { tp in runners.removeValue(forKey: tp).map { (tp, $0) } }
                    for (_, runner) in gone { runner.stop() }
                    let deadline = ContinuousClock.now + configuration.maxPollInterval / 3
                    for (tp, runner) in gone {
                        if await runner.finished(before: deadline) {
                            logger.info("released partition", metadata: ["partition": "\(tp)", "lost": "\(lost)"])
                        } else {
                            logger.warning("partition \(tp) is still ending its transaction; going on", metadata: ["lost": "\(lost)"])
                            retiring[tp] = runner
                        }
                        paused.remove(tp)
                    }
                case .message(let m):
                    runners[m.topicPartition]?.deliver(m)
                case .error(let error):
                    // A topic that does not exist yet is reported at every metadata refresh: once is enough.
                    if warned.insert(error.message).inserted { logger.warning("consumer: \(error)") }
                case .partitionEOF:
                    break
                }
            }
            for (tp, runner) in runners {
                if let offset = runner.pendingReset {
                    // Between polls, so that nothing read before the seek reaches the runner after it.
                    do {
                        try await consumer.seek([TopicPartitionOffset(tp, offset: offset)])
                        runner.resetDone()
                    } catch {
                        logger.warning("could not seek \(tp) to \(offset); trying again: \(error)")
                    }
                }
                let backlog = runner.backlog
                do {
                    if backlog > configuration.maxBacklog, !paused.contains(tp) {
                        try consumer.pause([tp])
                        paused.insert(tp)
                    } else if backlog < configuration.maxBacklog / 2, paused.contains(tp) {
                        try consumer.resume([tp])
                        paused.remove(tp)
                    }
                } catch {
                    logger.warning("could not pause or resume \(tp): \(error)")
                }
            }
            // New definitions: at most one look a second (it asks the broker for the events topic's partitions).
            if context.registry.generation != context.plan.current.generation, ContinuousClock.now - planCheckedAt >= .seconds(1) {
                planCheckedAt = .now
                guard let plan = await currentPlan(context) else { continue }
                if Set(plan.topicNames) != topics {
                    logger.info("definitions name other topics; subscribing again", metadata: ["topics": "\(plan.topicNames.joined(separator: ","))"])
                    break
                }
                for (topic, why) in plan.refused where context.plan.current.refused[topic] != why { logger.error("not reading topic \(topic): \(why)") }
                context.plan.set(plan)
                metrics.prepare(plan)
            }
        }
        for runner in runners.values { runner.stop() }
        // When the service stops, bounded: what a runner still has open then is aborted by the broker when its
        // transaction times out. When it subscribes again, each runner ends first.
        let deadline = ContinuousClock.now + configuration.stopTimeout
        var left: [TopicPartition] = []
        for (tp, runner) in Array(runners) + Array(retiring) {
            if isStopping { if await !runner.finished(before: deadline) { left.append(tp) } } else { await runner.finished() }
        }
        if !left.isEmpty {
            logger.warning(
                "stopping: partitions still ending their transactions after \(configuration.stopTimeout); leaving them to the transaction timeout",
                metadata: ["partitions": "\(left)"])
        }
        runners.removeAll()
    }
}

/// What every partition of a trigger service shares.
struct TriggerContext: Sendable {
    let configuration: TriggerConfiguration
    let registry: DefinitionRegistry
    let admin: KafkaAdmin
    let logger: Logger
    let metrics: TriggerMetrics
    let readiness: TriggerReadiness
    let gapRereads: Bool
    let plan = PlanBox()
}

/// The plan in force, replaced when definitions change.
final class PlanBox: Sendable {
    private let value = Mutex(TriggerPlan(workflows: [], latest: [:], namespace: "", eventsPartitions: 1, generation: -1))
    var current: TriggerPlan { value.withLock { $0 } }
    func set(_ plan: TriggerPlan) { value.withLock { $0 = plan } }
}

/// Whether the service is ready: it joined its group and initialised the producer of every partition it was
/// given; or it has nothing to read.
final class TriggerReadiness: Sendable {
    struct State {
        var joined = false
        var idle = false
        var stopped = false
        var taking = Set<TopicPartition>()
    }
    private let state = Mutex(State())

    var isReady: Bool { state.withLock { !$0.stopped && ($0.idle || ($0.joined && $0.taking.isEmpty)) } }
    func joined() { state.withLock { $0.joined = true } }
    /// No topic to read: nothing to wait for.
    func idle(_ idle: Bool) { state.withLock { $0.idle = idle } }
    /// The consumer left its group (to subscribe again, or to stop).
    func left() {
        state.withLock {
            $0.joined = false
            $0.taking = []
        }
    }
    func taking(_ tp: TopicPartition) { _ = state.withLock { $0.taking.insert(tp) } }
    func took(_ tp: TopicPartition) { _ = state.withLock { $0.taking.remove(tp) } }
    func released(_ tp: TopicPartition) { took(tp) }
    func stopped() { state.withLock { $0.stopped = true } }
}

import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import Tracing

public struct CoordinatorConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    public var names: TopicNames
    /// At most this many events go into one transaction.
    public var maxBatch = 2000
    /// How long a partition waits for events when no timer is due sooner.
    public var idleWait: Duration = .milliseconds(100)
    public var sessionTimeout: Duration = .seconds(10)
    public var maxPollInterval: Duration = .seconds(30)
    /// Partitions of a command topic the coordinator creates for a new worker pool.
    public var commandTopicPartitions = CommandTopics.defaultPartitions
    /// How long a finished instance stays queryable when its definition has no `retention`.
    public var retention: Millis = .days(7)
    /// The largest record the brokers take (Kafka's `max.message.bytes`, less a margin). An instance whose
    /// record would be larger goes on without it (its step fails, or it ends), instead of stopping the partition.
    public var maxRecordBytes = 990_000
    /// How often a long rebuild reports its progress.
    public var progressInterval: Duration = .seconds(5)
    /// A partition whose transactions keep failing backs off up to this long between tries...
    public var maxBackoff: Duration = .seconds(10)
    /// ...and alerts the on-call after this many failures in a row, or once it has been failing this long.
    public var alertAfterFailures = 5
    public var alertAfter: Duration = .seconds(30)
    /// How long a stopping coordinator waits for its partitions to end their transactions (commit or abort) and
    /// give them up. Partitions still ending then (the broker does not answer) are left to their transaction
    /// timeout, so that the process exits within its grace period broker or not (docs/deploy.md).
    public var stopTimeout: Duration = .seconds(12)
    /// Events waiting for a partition's transaction beyond this pause its fetching until it catches up.
    public var maxBacklog = 20_000
    /// Whether to read an events partition again when its offsets jump (see `GapRereads`).
    public var gapRereads = GapRereads.auto
    /// How far this coordinator's clock may be from the clocks of the processes whose records it reads before it
    /// holds its timers (ahead) or warns (behind): `ClockCheck`, docs/operations.md#clocks.
    public var clockSkewLimit: Millis = .seconds(30)
    /// Overrides the clock (milliseconds since the epoch); for tests that move time.
    public var clock: @Sendable () -> Timestamp = { WallClock.millis() }
    /// Names this coordinator in the records it writes.
    public var identity = "\(ProcessInfo.processInfo.hostName)/\(ProcessInfo.processInfo.processIdentifier)"
    /// Where the coordinator's metrics go (docs/observability.md): the process's, unless a test gives its own.
    public var metricsFactory: any MetricsFactory = MetricsSystem.factory
    /// The tracer of the spans of events and commands, whose context travels in the records' headers; nil
    /// (the default): no spans, and no trace context kept in instances.
    public var tracer: (any Tracer)?
    /// Who may send what: the keys of authority records and the secret of result tokens.
    public var security: CoordinatorSecurity

    public init(client: KafkaClientConfiguration, names: TopicNames, security: CoordinatorSecurity) {
        self.client = client
        self.names = names
        self.security = security
    }
}

/// What every partition of a coordinator shares.
struct CoordinatorContext: Sendable {
    let configuration: CoordinatorConfiguration
    let registry: DefinitionRegistry
    let commandTopics: CommandTopics
    /// The group member on the events topic: its group metadata goes into every transaction.
    let consumer: KafkaConsumer
    /// Outside transactions: fired timers (a duplicate is harmless) and alerts about the engine itself.
    let sideProducer: ResilientProducer
    let writeGate: WriteGate
    let logger: Logger
    /// Whether runners read an events partition again when its offsets jump (the broker is Tansu, or asked).
    let gapRereads: Bool
    let metrics: CoordinatorMetrics
    let tracer: (any Tracer)?
    let clockCheck: ClockCheck
    /// Alerts about the engine itself (a partition that cannot commit), through `sideProducer`.
    let alerts: EngineAlerts

    var settings: SagaSettings { SagaSettings(retention: configuration.retention) }
}

/// Refuses writes while the process may have lost its partitions without knowing: it was frozen (SIGSTOP,
/// a long pause) for long enough that the group may have moved them on.
final class WriteGate: Sendable {
    struct Stalled: Error, CustomStringConvertible {
        var description: String
    }
    private let holdUntil = Mutex<ContinuousClock.Instant?>(nil)

    /// Nothing is written until `instant`.
    func hold(until instant: ContinuousClock.Instant) {
        holdUntil.withLock { $0 = max($0 ?? instant, instant) }
    }

    var openAt: ContinuousClock.Instant? {
        holdUntil.withLock { h in
            guard let until = h, until > .now else { return nil }
            return until
        }
    }

    /// When the poll loop last polled the group.
    private let lastPoll = Mutex(ContinuousClock.now)

    func polled(at instant: ContinuousClock.Instant) { lastPoll.withLock { $0 = instant } }

    /// Whether a write outside a transaction (a timer's firing) may go out now: the gate is open, and the poll loop
    /// polled within `limit` (a process frozen for longer may have lost its partitions and not know it yet).
    func mayWrite(polledWithin limit: Duration) -> Bool {
        openAt == nil && ContinuousClock.now - lastPoll.withLock { $0 } <= limit
    }

    /// Throws when the gate is held, or when the caller itself was frozen: more than `limit` since `since`.
    func check(since: ContinuousClock.Instant, limit: Duration) throws {
        let elapsed = ContinuousClock.now - since
        if elapsed > limit {
            hold(until: .now + limit)
            throw Stalled(description: "stalled since the poll for \(elapsed.inMilliseconds) ms")
        }
        if let until = openAt { throw Stalled(description: "stalled since the poll: writes held for \((until - .now).inMilliseconds) ms more") }
    }
}

/// The saga coordinator: a member of the coordinators' group on the events topic. Each events partition it
/// owns runs on its own (`PartitionRunner`, with `CoordinatorHandler`): it rebuilds the partition's instances from the same partition
/// of the state and outputs topics, then applies events (and due timers) in batches, writing commands, state
/// snapshots, outputs, tasks, alerts and the consumed offsets in one Kafka transaction per batch, while the
/// next events are read. Its transactional id is the partition's, so whoever takes a partition over fences
/// the previous owner.
public final class Coordinator: Service, Sendable {
    public let configuration: CoordinatorConfiguration
    let logger: Logger
    private let stopping = Atomic(false)
    let readiness = PartitionReadiness()
    let metrics: CoordinatorMetrics
    let clockCheck: ClockCheck

    public init(configuration: CoordinatorConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        metrics = CoordinatorMetrics(group: configuration.names.coordinatorGroup, factory: configuration.metricsFactory)
        clockCheck = ClockCheck(limit: configuration.clockSkewLimit, now: configuration.clock(), logger: logger, factory: configuration.metricsFactory)
    }

    /// Whether the coordinator does its job: it joined its group, and has taken (fenced and rebuilt) every
    /// events partition the group gave it. Not ready while it rebuilds, nor while its clock runs ahead of the
    /// others' (its timers are held).
    public var isReady: Bool { readiness.isReady && !clockCheck.holdsTimers }

    /// Stops as on a graceful shutdown: each partition finishes its transaction, then the group is left.
    public func stop() { stopping.store(true, ordering: .releasing) }

    public func run() async throws {
        let names = configuration.names
        let registry = try await DefinitionRegistry(client: configuration.client, names: names, logger: logger)
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        var consumerConfiguration = KafkaConsumerConfiguration.engineMember(
            client: configuration.client, group: names.coordinatorGroup, sessionTimeout: configuration.sessionTimeout,
            maxPollInterval: configuration.maxPollInterval)
        // A partition's end (read_committed: the end of what committed) is where a new owner has applied what was
        // queued for it, and may fire its timers.
        consumerConfiguration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger)
        var sideConfiguration = KafkaProducerConfiguration(client: configuration.client)
        sideConfiguration.linger = .milliseconds(1)
        let sideProducer = try ResilientProducer(configuration: sideConfiguration, logger: logger)
        let context = CoordinatorContext(
            configuration: configuration, registry: registry,
            commandTopics: CommandTopics(admin: admin, partitions: configuration.commandTopicPartitions, logger: logger),
            consumer: consumer, sideProducer: sideProducer, writeGate: WriteGate(), logger: logger,
            gapRereads: configuration.gapRereads.enabled(clusterID: try await admin.metadata().clusterID),
            metrics: metrics, tracer: configuration.tracer, clockCheck: clockCheck,
            alerts: EngineAlerts(
                producer: sideProducer, topic: names.alerts, logger: logger, clock: configuration.clock,
                count: { [metrics] in metrics.alerts($0).increment() }))
        try consumer.subscribe([names.events])
        logger.info("coordinator started", metadata: ["group": "\(names.coordinatorGroup)", "topic": "\(names.events)", "gap_rereads": "\(context.gapRereads)"])

        let result: Result<Void, any Error>
        do {
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { await registry.follow() }
                    let members = PartitionGroup(
                        consumer: consumer, handler: CoordinatorHandler(context: context), readiness: self.readiness,
                        isStopping: { self.stopping.load(ordering: .acquiring) })
                    try await members.run(in: &group)
                    group.cancelAll()  // the registry's follower; the partitions have ended already
                }
            } onGracefulShutdown: {
                self.stop()
            }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        readiness.stopped()
        // Side by side, each bounded: with no broker, each waits its whole bound.
        async let left: Void = consumer.close()
        async let flushed: Void = sideProducer.close(timeout: .seconds(2))
        async let unfollowed: Void = registry.close()
        _ = await (left, flushed, unfollowed)
        if case .failure(let error) = result {
            // Cancelled by whoever runs it (a test, an embedding app): a stop asked for, not a failure.
            if error is CancellationError { logger.info("coordinator stopped: cancelled") } else { logger.error("coordinator stopped: \(error)") }
            throw error
        }
        logger.info("coordinator stopped")
    }
}

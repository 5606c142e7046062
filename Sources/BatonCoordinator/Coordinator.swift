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
    let readiness: CoordinatorReadiness
    let clockCheck: ClockCheck

    var settings: SagaSettings { SagaSettings(retention: configuration.retention) }

    /// Tells the on-call about the engine itself (a partition that cannot commit); logged when even that fails.
    /// Whether the alert was delivered.
    @discardableResult
    func engineAlert(partition: Int32, severity: Alert.Severity, _ message: String) async -> Bool {
        logger.log(level: severity == .warning ? .warning : .error, "alert: \(message)", metadata: ["partition": "\(partition)"])
        metrics.alerts(severity.rawValue).increment()
        let names = configuration.names
        let record = AlertRecord(
            alert: AlertMessage(severity: severity, instanceID: nil, workflowID: nil, step: nil, message: message, partition: partition), at: configuration.clock())
        do {
            try await sideProducer.send(
                ProducerRecord(topic: names.alerts, key: Data("coordinator/\(partition)".utf8), value: Wire.encode(record), headers: Wire.headers(.alert)))
            return true
        } catch {
            logger.error("could not send the alert either (it is tried again): \(error)", metadata: ["partition": "\(partition)"])
            return false
        }
    }
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
/// owns runs on its own (`PartitionRunner`): it rebuilds the partition's instances from the same partition
/// of the state and outputs topics, then applies events (and due timers) in batches, writing commands, state
/// snapshots, outputs, tasks, alerts and the consumed offsets in one Kafka transaction per batch, while the
/// next events are read. Its transactional id is the partition's, so whoever takes a partition over fences
/// the previous owner.
public final class Coordinator: Service, Sendable {
    public let configuration: CoordinatorConfiguration
    let logger: Logger
    private let stopping = Atomic(false)
    let readiness = CoordinatorReadiness()
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
            metrics: metrics, tracer: configuration.tracer, readiness: readiness, clockCheck: clockCheck)
        try consumer.subscribe([names.events])
        logger.info("coordinator started", metadata: ["group": "\(names.coordinatorGroup)", "topic": "\(names.events)", "gap_rereads": "\(context.gapRereads)"])

        let result: Result<Void, any Error>
        do {
            try await withGracefulShutdownHandler {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { await registry.follow() }
                    try await self.pollLoop(context: context, group: &group)
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

    /// Polls the group and hands each partition's events to its runner; takes and gives up partitions as the
    /// group decides; pauses fetching for a partition whose runner falls behind.
    func pollLoop(context: CoordinatorContext, group: inout ThrowingDiscardingTaskGroup<any Error>) async throws {
        let names = configuration.names
        let consumer = context.consumer
        var runners: [Int32: PartitionRunner] = [:]
        /// Runners told to stop that had not ended when the poll loop stopped waiting for them.
        var retiring: [Int32: PartitionRunner] = [:]
        var paused = Set<Int32>()
        var lastPoll = ContinuousClock.now
        defer {
            for runner in runners.values { runner.stop() }
        }
        while !stopping.load(ordering: .acquiring) && !Task.isCancelled {
            let events = try await consumer.poll(maxEvents: configuration.maxBatch, timeout: .milliseconds(50))
            let polled = ContinuousClock.now
            if polled - lastPoll > configuration.sessionTimeout / 3 {
                // Frozen (or starved) for long enough that the group may have moved our partitions on without
                // telling us yet: write nothing until it has had time to.
                logger.warning("stalled since the poll for \((polled - lastPoll).inMilliseconds) ms; holding writes until the group confirms the partitions")
                context.writeGate.hold(until: polled + configuration.sessionTimeout / 3)
            }
            lastPoll = polled
            context.writeGate.polled(at: polled)
            let wallNow = configuration.clock()
            clockCheck.tick(now: wallNow)
            /// The last record of each events partition in this poll: a clock sample when it was the partition's end.
            var lastRead: [Int32: KafkaMessage] = [:]
            defer {
                for (p, m) in lastRead {
                    if let high = consumer.cachedHighWatermark(TopicPartition(names.events, p)), m.offset + 1 >= high { clockCheck.sample(m, now: wallNow) }
                }
            }
            for event in events {
                switch event {
                case .assigned(let partitions):
                    // Counted when partitions change hands: a cooperative rebalance assigns nothing to a member that keeps its own.
                    if !partitions.isEmpty { metrics.rebalances("assigned").increment() }
                    readiness.joined()
                    for p in partitions where p.topic == names.events {
                        if let old = runners.removeValue(forKey: p.partition) {
                            logger.warning("partition \(p.partition) assigned again while still held; starting over")
                            old.stop()
                            retiring[p.partition] = old
                        }
                        // A runner of this partition still ending goes first: the new one takes the partition after.
                        let runner = PartitionRunner(partition: p.partition, context: context, after: retiring.removeValue(forKey: p.partition))
                        readiness.taking(p.partition)
                        runners[p.partition] = runner
                        paused.remove(p.partition)
                        group.addTask { await runner.run() }
                    }
                case .revoked(let partitions, let lost):
                    if !partitions.isEmpty { metrics.rebalances("revoked").increment() }
                    for p in partitions where p.topic == names.events { readiness.released(p.partition) }
                    // Each runner ends its transaction (commit or abort) before the partition is let go; the loop
                    // waits for that, but not so long that the group takes this member for dead.
                    let gone = partitions.filter { $0.topic == names.events }.compactMap { p in runners.removeValue(forKey: p.partition).map { (p.partition, $0) } }
                    for (_, runner) in gone { runner.stop() }
                    let deadline = ContinuousClock.now + configuration.maxPollInterval / 3
                    for (p, runner) in gone {
                        if await runner.finished(before: deadline) {
                            logger.info("released partition", metadata: ["partition": "\(p)", "lost": "\(lost)"])
                        } else {
                            logger.warning("partition \(p) is still ending its transaction; going on", metadata: ["lost": "\(lost)"])
                            retiring[p] = runner
                        }
                        paused.remove(p)
                    }
                case .message(let m):
                    runners[m.partition]?.deliver(m)
                    if m.topic == names.events { lastRead[m.partition] = m }
                case .error(let error):
                    logger.warning("consumer: \(error)")
                case .partitionEOF(let tp, let offset):
                    if tp.topic == names.events { runners[tp.partition]?.observeEnd(offset) }
                }
            }
            for (p, runner) in runners {
                // The partition's end when it was taken: a fetch's high watermark (right on brokers whose
                // ListOffsets answer is not), known after the first fetch of the partition.
                if !runner.knowsEnd, let high = consumer.cachedHighWatermark(TopicPartition(names.events, p)) { runner.observeEnd(high) }
                if let offset = runner.pendingReset {
                    // A runner that must read again (it took its partition anew, or saw offsets out of order):
                    // seek here, between polls, so that nothing read before the seek reaches it after.
                    do {
                        try await consumer.seek([TopicPartitionOffset(names.events, p, offset: offset)])
                        runner.resetDone()
                    } catch {
                        logger.warning("could not seek partition \(p) to \(offset); trying again: \(error)")
                    }
                }
                let backlog = runner.backlog
                let tp = TopicPartition(names.events, p)
                do {
                    if backlog > configuration.maxBacklog, !paused.contains(p) {
                        try consumer.pause([tp])
                        paused.insert(p)
                    } else if backlog < configuration.maxBacklog / 2, paused.contains(p) {
                        try consumer.resume([tp])
                        paused.remove(p)
                    }
                } catch {
                    logger.warning("could not pause or resume partition \(p): \(error)")
                }
            }
        }
        for runner in runners.values { runner.stop() }
        // Bounded: those still ending when the time is up are cancelled with the task group (they stop waiting for
        // the broker), and what they had open is aborted by the broker when its transaction times out.
        let deadline = ContinuousClock.now + configuration.stopTimeout
        var left: [Int32] = []
        for (p, runner) in Array(runners) + Array(retiring) {
            if await !runner.finished(before: deadline) { left.append(p) }
        }
        if !left.isEmpty {
            logger.warning(
                "stopping: partitions still ending their transactions after \(configuration.stopTimeout); leaving them to the transaction timeout",
                metadata: ["partitions": "\(left.sorted())"])
        }
        runners.removeAll()
    }
}

/// Whether a coordinator is ready: it joined its group and took every partition it was given.
final class CoordinatorReadiness: Sendable {
    struct State {
        var joined = false
        var stopped = false
        var taking = Set<Int32>()
    }
    private let state = Mutex(State())

    var isReady: Bool { state.withLock { $0.joined && !$0.stopped && $0.taking.isEmpty } }
    func joined() { state.withLock { $0.joined = true } }
    func taking(_ partition: Int32) { _ = state.withLock { $0.taking.insert(partition) } }
    /// Taken (rebuilt), or given up.
    func took(_ partition: Int32) { _ = state.withLock { $0.taking.remove(partition) } }
    func released(_ partition: Int32) { took(partition) }
    func stopped() { state.withLock { $0.stopped = true } }
}

extension SagaEvent {
    /// What a span of applying the event is called: the kind of event and its step.
    func spanName(_ workflow: Workflow) -> String {
        switch self {
        case .stepCompleted(let step, _, _, _): "step.completed \(step)"
        case .stepFailed(let step, _, _, _, _): "step.failed \(step)"
        case .compensationCompleted(let step, _, _): "compensation.completed \(step)"
        case .compensationFailed(let step, _, _, _): "compensation.failed \(step)"
        case .taskDecided(let step, _, _, _, _, _, _, _): "task.decided \(step)"
        case .taskClaimed(let step, _, _, _, _, _): "task.claimed \(step)"
        case .heartbeat(let step, _, _, _): "step.heartbeat \(step)"
        case .timerFired(let key, _):
            "timer \(key.kind.rawValue)\(key.step.flatMap { workflow.steps.indices.contains($0) ? " \(workflow.steps[$0].id)" : nil } ?? "")"
        case .cancel: "operator cancel"
        case .resume: "operator resume"
        case .retry: "operator retry"
        case .skip(let step, _, _, _): "operator skip \(step)"
        case .eventReceived(let step, _, _, _): "event.received \(step)"
        case .signal(let name, _, _, _): "signal \(name)"
        }
    }
}

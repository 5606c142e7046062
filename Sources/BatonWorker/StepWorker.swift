import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import DequeModule
import Foundation
import Logging
import CoreMetrics
import Metrics
import ServiceLifecycle
import Synchronization
import Tracing

/// What a handler gets: the command, with its input, attempt and idempotency key.
public struct StepContext: Sendable {
    public let command: CommandMessage
    public let logger: Logger
    let heartbeats: HeartbeatSender
    public var input: JSON { command.input }
    public var instanceID: String { command.instanceID }
    public var step: String { command.step }
    public var item: Int? { command.item }
    public var attempt: Int { command.attempt }
    /// The same for every attempt of a step (or item): use it to make side effects happen once.
    public var idempotencyKey: String { command.idempotencyKey }
    public var isCompensation: Bool { command.isCompensation }
    /// When the coordinator stops waiting for this attempt (milliseconds since the epoch): the step's timeout
    /// after the worker started it (a coordinator of the release before sends the deadline itself).
    public var deadline: Int64 { command.timeout.map { heartbeats.startedAt + $0 } ?? command.deadline }

    /// Tells the coordinator the attempt is alive (and how far it got, in `details`, at most 4 KiB of JSON).
    /// A step with a `heartbeat_timeout` fails an attempt that stays silent that long; call this from a long
    /// handler at least that often. Calls closer together than a third of the timeout (and at least a second)
    /// send nothing; a heartbeat that cannot be sent is logged, not thrown.
    public func heartbeat(_ details: JSON? = nil) async { await heartbeats.send(details) }
}

/// Throw this from a handler to fail the attempt; `retryable: false` skips the remaining attempts.
public struct StepFailure: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var retryable: Bool
    public init(_ message: String, retryable: Bool = true) {
        self.message = message
        self.retryable = retryable
    }
    public var description: String { message }
}

public typealias StepHandler = @Sendable (StepContext) async throws -> JSON

public struct WorkerConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    public var names: TopicNames
    /// The worker pool: a step's `worker`, else its `type`.
    public var pool: String
    /// Commands handled at once. When all are busy the worker keeps polling (so that the group keeps it), and
    /// the commands it receives wait for a free slot.
    public var concurrency = 32
    /// Commands fetched ahead and waiting for a slot at most (nil: `concurrency`), and librdkafka's own queue is
    /// kept as small. A worker takes no more than it can start soon: the rest waits in Kafka, where it shows as the
    /// group's lag and any member that gets the partition can take it. With that many waiting the worker takes
    /// nothing more until a slot frees; when they have waited `pauseAfter` (its steps are long), its partitions are
    /// paused (it keeps polling) until half of them are taken.
    public var prefetch: Int?
    /// How long the buffer stays full before the worker pauses its partitions. Short steps free slots sooner, and
    /// are never paused for: a pause makes librdkafka drop what it fetched and deliver nothing for about a second
    /// after the resume (a burst of short steps ran ten times slower when every full buffer paused).
    public var pauseAfter: Duration = .seconds(1)
    /// An attempt still running this long after it started is reported started (a `step.heartbeat`: its run
    /// timeout counts from then). Shorter attempts send no report: their result ends them. At most 1 s
    /// (docs/wire-protocol.md); an attempt whose start deadline is this close reports at once.
    public var startReport: Duration = .milliseconds(500)
    public var sessionTimeout: Duration = .seconds(10)
    public var maxPollInterval: Duration = .seconds(30)
    /// On graceful shutdown, in-flight commands get this long to finish; the rest are handed back.
    public var shutdownGrace: Duration = .seconds(10)
    /// A command received this long after its deadline (the step's `queue_timeout` ran out before it started) is
    /// not run: the coordinator has counted the attempt as failed and sends another (the margin allows for clocks
    /// that differ a little).
    public var deadlineMargin: Duration = .seconds(1)
    /// Partitions of the command topic, if the worker has to create it.
    public var commandTopicPartitions = CommandTopics.defaultPartitions
    /// Whether to read a command partition again when its offsets jump (see `GapRereads`).
    public var gapRereads = GapRereads.auto
    /// Where the worker's metrics go (docs/observability.md): the process's, unless a test gives its own.
    public var metricsFactory: any MetricsFactory = MetricsSystem.factory
    /// The tracer of the span around each command's handler: a child of the command's span (its context comes
    /// in the record's headers), and the parent of the result's. Nil: `InstrumentationSystem.tracer`, which
    /// is a no-op unless the process bootstrapped one.
    public var tracer: (any Tracer)?

    public init(client: KafkaClientConfiguration, names: TopicNames, pool: String) {
        self.client = client
        self.names = names
        self.pool = pool
    }
}

/// A step worker: a member of its pool's consumer group on the pool's command topic. It runs the handler
/// for each command (at most `concurrency` at once), sends the result to the events partition the command
/// names, and commits a command's offset only once its result is delivered, so that the commands of a
/// worker that dies are redelivered to another member.
///
/// It keeps polling whatever its handlers do, so that a step of any length is run once: with every slot
/// busy for a while, or while results cannot be delivered (the broker is away), its partitions are paused instead. A
/// producer that hits a fatal error is replaced; a fatal consumer error ends `run` with that error.
public final class StepWorker: Service, Sendable {
    public let configuration: WorkerConfiguration
    let handler: StepHandler
    let logger: Logger
    let stopping = Atomic<Bool>(false)
    let recent = RecentCommands(capacity: 10_000)
    let metrics: WorkerMetrics
    let tracer: any Tracer
    /// False when no tracer is installed (the no-op one): then no span is started at all, and trace headers
    /// are passed on as they came.
    let tracing: Bool
    /// Joined its group (it was given partitions, or none, by the group), and not stopped since.
    let joined = Atomic<Bool>(false)

    public init(configuration: WorkerConfiguration, logger: Logger, handler: @escaping StepHandler) {
        self.configuration = configuration
        self.handler = handler
        self.logger = logger
        metrics = WorkerMetrics(pool: configuration.pool, group: configuration.names.workerGroup(configuration.pool), factory: configuration.metricsFactory)
        tracer = configuration.tracer ?? InstrumentationSystem.tracer
        tracing = !(tracer is NoOpTracer)
    }

    /// Whether the worker takes commands: it has joined its pool's group.
    public var isReady: Bool { joined.load(ordering: .acquiring) }

    public func run() async throws {
        let names = configuration.names
        let topic = names.commands(configuration.pool)
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        try await CommandTopics(admin: admin, partitions: configuration.commandTopicPartitions, logger: logger).ensure([topic])
        var consumerConfiguration = KafkaConsumerConfiguration.engineMember(
            client: configuration.client, group: names.workerGroup(configuration.pool), sessionTimeout: configuration.sessionTimeout,
            maxPollInterval: configuration.maxPollInterval)
        for (key, value) in Self.smallFetchQueue(commands: bufferLimit) where configuration.client.additional[key] == nil {
            consumerConfiguration.additional[key] = consumerConfiguration.additional[key] ?? value
        }
        let consumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger)
        var producerConfiguration = KafkaProducerConfiguration(client: configuration.client)
        producerConfiguration.linger = .milliseconds(5)
        let sender = try ResilientProducer(configuration: producerConfiguration, logger: logger)
        try consumer.subscribe([topic])
        // On Tansu, a command partition written by two coordinator partitions at once can show later commands first.
        let metadata = try await admin.metadata()
        let shared = (metadata.topics[topic]?.partitionCount ?? 0) < (metadata.topics[names.events]?.partitionCount ?? 0)
        let rereads = configuration.gapRereads == .auto ? shared && GapRereads.auto.enabled(clusterID: metadata.clusterID) : configuration.gapRereads == .on
        logger.info("worker started", metadata: ["pool": "\(configuration.pool)", "topic": "\(topic)", "gap_rereads": "\(rereads)"])

        let result: Result<Void, any Error>
        do {
            try await withGracefulShutdownHandler {
                try await self.loop(consumer: consumer, sender: sender, gaps: GapGuard(enabled: rereads))
            } onGracefulShutdown: {
                self.stopping.store(true, ordering: .releasing)
            }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        joined.store(false, ordering: .releasing)
        // Bounded, side by side: a stopping worker must not hang on a broker that does not answer.
        async let flushed: Void = sender.close(timeout: .seconds(2))
        async let left: Void = consumer.close(timeout: .seconds(5))
        _ = await (flushed, left)
        if case .failure(let error) = result {
            logger.error("worker stopped: \(error)", metadata: ["pool": "\(configuration.pool)"])
            throw error
        }
        logger.info("worker stopped", metadata: ["pool": "\(configuration.pool)"])
    }

    /// Asks the worker to stop as on a graceful shutdown.
    public func stop() { stopping.store(true, ordering: .releasing) }

    /// Commands fetched ahead and waiting for a slot at most.
    var bufferLimit: Int { max(1, configuration.prefetch ?? configuration.concurrency) }

    /// librdkafka's own fetch queue, kept about as small as the worker's (its defaults prefetch up to 100,000
    /// records or 64 MiB): what the worker cannot start soon stays in Kafka. A fetch held back because the queue is
    /// full is tried again after 50 ms, not librdkafka's 1 s, so that a worker whose queue drains gets more at once.
    /// Settings the client's `additional` names win.
    static func smallFetchQueue(commands: Int) -> [String: String] {
        ["queued.min.messages": String(max(1, commands)), "queued.max.messages.kbytes": "1024", "fetch.queue.backoff.ms": "50"]
    }

    func loop(consumer: KafkaConsumer, sender: ResilientProducer, gaps initialGaps: GapGuard) async throws {
        var gaps = initialGaps
        let tracker = OffsetTracker()
        let limiter = Limiter(configuration.concurrency)
        let delivery = DeliveryHealth()
        let waiting = CommandQueue()
        // Commands polled beyond the free slots wait here, `prefetch` of them at most (about the concurrency): a
        // worker holds what it can start soon, the rest waits in Kafka. Full for `pauseAfter`, fetching pauses
        // until half are taken.
        let bufferLimit = self.bufferLimit
        var fullSince: ContinuousClock.Instant?
        var lastCommit = ContinuousClock.now
        var lastLag = ContinuousClock.now
        var assigned = Set<TopicPartition>()
        var paused = Set<TopicPartition>()
        var commitFailures = 0
        try await withThrowingDiscardingTaskGroup { group in
            /// Starts waiting commands while there are free slots; each task takes the next waiting command when it
            /// is done with one, so that a freed slot is used at once.
            func startWaiting() {
                while limiter.free > 0, let first = waiting.take(tracker) {
                    limiter.take()
                    group.addTask {
                        var next: KafkaMessage? = first
                        while let message = next {
                            // A command handed back (cancelled at the end of the grace period) stays uncommitted,
                            // so that the next owner of its partition runs it.
                            if await self.handle(message, sender: sender, delivery: delivery) { tracker.finished(message) }
                            next = Task.isCancelled || self.stopping.load(ordering: .acquiring) ? nil : waiting.take(tracker)
                        }
                        limiter.give()
                    }
                }
            }
            while !stopping.load(ordering: .acquiring) && !Task.isCancelled {
                // Many commands waiting, or results are not getting through: keep polling (so that the group
                // keeps this member, however long its steps run), fetch nothing more.
                let backlog = waiting.count
                let now = ContinuousClock.now
                fullSince = backlog >= bufferLimit ? fullSince ?? now : nil
                let slow = fullSince.map { now - $0 >= configuration.pauseAfter } ?? false
                let hold = delivery.failing > 0 || slow || (!paused.isEmpty && backlog > bufferLimit / 2)
                do {
                    if hold {
                        let more = assigned.subtracting(paused)
                        if !more.isEmpty {
                            try consumer.pause(Array(more))
                            paused.formUnion(more)
                        }
                    } else if !paused.isEmpty {
                        try consumer.resume(Array(paused))
                        paused.removeAll()
                    }
                } catch {
                    logger.warning("could not pause or resume the command partitions: \(error)")
                }
                let events: [KafkaConsumerEvent]
                if let fullSince, !hold {
                    // Full for a moment: take nothing more until a quarter has started (librdkafka's queue, as
                    // small, holds what it fetched; its heartbeats go on), then poll that many at once. Rebalances
                    // wait for the next poll, `pauseAfter` at most.
                    await waiting.waitForRoom(below: bufferLimit - bufferLimit / 4, until: min(fullSince + configuration.pauseAfter, now + .milliseconds(100)))
                    events = []
                } else {
                    // A fatal consumer error ends the loop (and `run`, with it): the process should be replaced.
                    events = try await consumer.poll(maxEvents: max(1, bufferLimit - backlog), timeout: .milliseconds(100))
                }
                var readingAgain = Set<TopicPartition>()
                for event in events {
                    switch event {
                    case .message(let message):
                        if readingAgain.contains(message.topicPartition) { continue }  // comes again after the seek
                        switch gaps.check(message) {
                        case .take:
                            waiting.append(message)
                        case .drop:
                            break
                        case .filledGap(let from, let to):
                            logger.warning(
                                "the broker showed later commands before earlier ones; read again, they are there now",
                                metadata: ["partition": "\(message.topicPartition)", "offsets": "\(from)..<\(to)"])
                            waiting.append(message)
                        case .reread(let from):
                            do {
                                try await consumer.seek([TopicPartitionOffset(message.topicPartition, offset: from)])
                                readingAgain.insert(message.topicPartition)
                            } catch {
                                logger.warning("could not read \(message.topicPartition) again from \(from); going on: \(error)")
                                gaps.forget([message.topicPartition])
                                _ = gaps.check(message)
                                waiting.append(message)
                            }
                        }
                    case .assigned(let partitions):
                        assigned.formUnion(partitions)
                        joined.store(true, ordering: .releasing)
                    case .revoked(let partitions, _):
                        // Commands not started yet go back with their partitions; commit what is done for them while
                        // we still may; the rest is redelivered to the new owner.
                        waiting.drop(Set(partitions))
                        gaps.forget(Set(partitions))
                        let done = tracker.committable(of: Set(partitions))
                        do { try await consumer.commit(done) } catch {
                            logger.info("could not commit the finished commands of revoked partitions (they are redelivered): \(error)")
                        }
                        tracker.forget(Set(partitions))
                        for tp in partitions { metrics.lag.forget(tp) }
                        assigned.subtract(partitions)
                        paused.subtract(partitions)
                    case .error(let error):
                        logger.warning("consumer: \(error)")
                    case .partitionEOF:
                        break
                    }
                }
                startWaiting()
                metrics.inFlight.record(limiter.inFlight)
                metrics.waiting.record(waiting.count)
                if ContinuousClock.now - lastLag >= .seconds(1) {
                    lastLag = .now
                    // What the group still has to finish: from where it would resume to the high watermark.
                    for (tp, next) in tracker.positions(of: assigned) {
                        if let high = consumer.cachedHighWatermark(tp) { metrics.lag.record(tp, lag: high - next) }
                    }
                }
                if ContinuousClock.now - lastCommit > .milliseconds(50) {
                    // Partitions with nothing waiting or running are done up to their fetch position, past the
                    // transaction markers after their last command (committed, the group's lag there is 0).
                    // (The waiting queue is scanned only when some partition has nothing running: not under load.)
                    var idle = assigned.filter { tracker.isIdle($0) }
                    if !idle.isEmpty {
                        let busy = waiting.partitions()
                        idle = idle.filter { !busy.contains($0) }
                    }
                    var past: [TopicPartition: Int64] = [:]
                    if !idle.isEmpty {
                        do { past = try consumer.positions(Array(idle)) } catch {
                            logger.debug("could not read the fetch positions; committing up to the last command: \(error)")
                        }
                    }
                    if await commit(tracker, consumer, past: past) {
                        commitFailures = 0
                    } else {
                        commitFailures += 1
                        if commitFailures == 100 { logger.warning("offsets have not been committed for a while; finished commands may run again") }
                    }
                    lastCommit = .now
                }
            }
            // Graceful stop: commands not started are handed back; in-flight ones get the grace period.
            waiting.drop(nil)
            let grace = configuration.shutdownGrace
            group.addTask {
                // Cancelled when the commands finish first.
                try? await Task.sleep(for: grace)
                limiter.expire()
            }
            let inFlight = limiter.inFlight
            if inFlight > 0 {
                logger.info("stopping: waiting for the commands in flight", metadata: ["pool": "\(configuration.pool)", "commands": "\(inFlight)", "grace": "\(grace)"])
            }
            await limiter.waitUntilIdle()
            let unfinished = limiter.inFlight
            if unfinished > 0 {
                metrics.handedBack.increment(by: unfinished)
                logger.warning(
                    "grace period over: handing back the commands still running (they are redelivered)",
                    metadata: ["pool": "\(configuration.pool)", "commands": "\(unfinished)"])
            }
            group.cancelAll()
        }
        _ = await commit(tracker, consumer)
    }

    /// Commits what is finished; false when the commit failed (during a rebalance, or with the broker away).
    func commit(_ tracker: OffsetTracker, _ consumer: KafkaConsumer, past: [TopicPartition: Int64] = [:]) async -> Bool {
        let offsets = tracker.committable(of: nil, past: past)
        guard !offsets.isEmpty else { return true }
        do {
            // Bounded short: the loop that commits also polls, and a commit that does not get through (the broker
            // is away) is tried again on the next round; a long wait here would keep the member from polling
            // (the group drops it after max.poll.interval) and a stopping worker from stopping.
            try await consumer.commit(offsets, timeout: .seconds(2))
            tracker.committed(offsets)
            return true
        } catch {
            logger.debug("commit failed (it is tried again): \(error)")
            return false
        }
    }

    /// Runs one command and delivers its result; a record it cannot use goes to the dead-letter topic.
    /// Returns whether it is done with the record (false: handed back, to be redelivered).
    func handle(_ message: KafkaMessage, sender: ResilientProducer, delivery: DeliveryHealth) async -> Bool {
        let names = configuration.names
        let command: CommandMessage
        do {
            guard let value = message.value else { throw Wire.DecodeError("a record without a value") }
            if value.count <= Wire.maxRecordBytes, let fast = CommandMessage.fastDecode(value) {
                command = fast
            } else {
                let kind = try Wire.kind(of: value)
                guard kind == .stepCommand || kind == .compensationCommand else {
                    throw Wire.DecodeError("a '\(kind.rawValue)' record does not belong on a command topic")
                }
                command = try Wire.decode(CommandMessage.self, from: value)
            }
        } catch {
            let code: DeadLetterReason = (error as? Wire.DecodeError)?.reason.contains("does not belong on a command topic") == true ? .notACommand : .unreadable
            metrics.deadLetters.record(code)
            logger.warning("command sent to the dead-letter topic", metadata: ["offset": "\(message.partition)/\(message.offset)", "error": "\(error)"])
            return await deliver(
                deadLetterRecord(message, code: code, reason: (error as? Wire.DecodeError)?.reason ?? "\(error)", topic: names.deadletter), sender: sender,
                delivery: delivery)
        }
        var logger = self.logger
        // Set at once: a log handler may rebuild its rendered metadata on every change (swift-log's stream one does).
        logger.handler.metadata.merge(["instance": "\(command.instanceID)", "step": "\(command.step)", "attempt": "\(command.attempt)"]) { $1 }
        let now = WallClock.millis()
        if now > command.deadline + Int64(configuration.deadlineMargin.inMilliseconds) {
            // Not started within the step's queue_timeout (or, from a coordinator of the release before, its timeout):
            // the coordinator has counted this attempt as failed; running it now would be wasted.
            logger.info("command past its deadline; not run", metadata: ["late_ms": "\(now - command.deadline)"])
            metrics.commands(command.step, "late").increment()
            return true
        }
        let key = "\(command.idempotencyKey)#\(command.attempt)"
        switch recent.begin(key) {
        case .answered(let record):
            logger.info("command delivered again; answering with the result sent before, without running it again")
            metrics.commands(command.step, "repeated").increment()
            return await deliver(record, sender: sender, delivery: delivery)
        case .running:
            logger.info("command delivered again while it runs; the run under way answers it")
            return true
        case .new:
            break
        }
        logger.debug("handling command", metadata: ["age_ms": "\(message.timestamp.map { now - $0 } ?? -1)"])
        if let written = message.timestamp { metrics.queueWait(command.step).recordMilliseconds(max(0, now - written)) }
        // The handler's span: a child of the command's span, whose context the coordinator put in the headers.
        // With no tracer installed, or for a trace its root did not sample (W3C flags 00), no span is made, and
        // `passOn` holds the trace headers that the result and heartbeats carry on as they came.
        let passOn = tracing ? TraceHeaders.unsampled(TraceHeaders.traceparent(of: message)).map { [$0] } : TraceHeaders.passOn(message)
        let span: (any Span)? =
            passOn != nil
            ? nil
            : tracer.startAnySpan(
                "\(command.isCompensation ? "compensate" : "process") \(command.step)", context: tracer.context(from: message.headers) ?? .topLevel,
                ofKind: .consumer)
        span?.kafka(message.topic, partition: message.partition, offset: message.offset, operation: "process")
        span?.updateAttributes { a in
            a["baton.instance_id"] = command.instanceID
            a["baton.workflow"] = command.workflowID
            a["baton.step"] = command.step
            a["baton.attempt"] = command.attempt
            if let item = command.item { a["baton.item"] = item }
        }
        defer { span?.end() }
        let heartbeats = HeartbeatSender(command: command, sender: sender, logger: logger, trace: span?.context, passOn: passOn ?? [], tracer: tracer)
        var result: ResultMessage
        let began = ContinuousClock.now
        do {
            let context = StepContext(command: command, logger: logger, heartbeats: heartbeats)
            let output: JSON = try await reportingStart(heartbeats) {
                if let span {
                    try await ServiceContext.withValue(span.context) { try await handler(context) }
                } else {
                    try await handler(context)
                }
            }
            result = .completed(command, output: output)
        } catch let failure as StepFailure {
            result = .failed(command, error: failure.message, retryable: failure.retryable)
        } catch is CancellationError {
            recent.abandon(key)
            metrics.commands(command.step, "handed_back").increment()
            span?.attributes["baton.handed_back"] = true
            return false  // handed back: not committed, so redelivered
        } catch {
            result = .failed(command, error: "\(error)", retryable: true)
        }
        metrics.handler(command.step).record(duration: ContinuousClock.now - began)
        var value = Wire.encode(result)
        if result.kind == .stepCompleted, value.count > Wire.maxResultBytes {
            // The coordinator would fail the step anyway, and a record over the broker's limit could never be sent.
            let error = "the step's output is \(value.count) bytes, more than the limit of \(Wire.maxResultBytes)"
            logger.warning("\(error); the step fails (not retryable)")
            result = .failed(command, error: error, retryable: false)
            value = Wire.encode(result)
        }
        if result.kind == .stepCompleted || result.kind == .compensationCompleted {
            metrics.commands(command.step, "completed").increment()
        } else {
            metrics.commands(command.step, "failed").increment()
            span?.setStatus(SpanStatus(code: .error, message: result.error))
        }
        var headers = Wire.headers(result.kind)
        if let span { tracer.inject(span.context, into: &headers, using: KafkaHeadersInjector()) } else { headers += passOn ?? [] }
        let record = ProducerRecord(
            topic: command.replyTo.topic, partition: command.replyTo.partition, key: Data(command.instanceID.utf8), value: value,
            headers: headers)
        recent.finish(key, record)
        return await deliver(record, sender: sender, delivery: delivery)
    }

    /// Runs a step's handler, reporting the attempt's start if it is still running after `startReport` (at once
    /// when its start deadline is near): the coordinator counts the step's timeout from the report. An attempt
    /// that ends first needs none (its result ends it), which saves a record per short step. Compensations, and
    /// commands from a coordinator of the release before (no `timeout`), report nothing.
    func reportingStart(_ heartbeats: HeartbeatSender, _ body: () async throws -> JSON) async throws -> JSON {
        let command = heartbeats.command
        guard command.timeout != nil, !command.isCompensation else { return try await body() }
        let untilDeadline = Duration.milliseconds(command.deadline - heartbeats.startedAt)
        let delay = untilDeadline < configuration.startReport + .seconds(2) ? .zero : min(configuration.startReport, .seconds(1))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do { try await Task.sleep(for: delay) } catch { return }  // cancelled: the attempt ended first
                await heartbeats.reportStart()
            }
            let output = try await body()
            group.cancelAll()
            return output
        }
    }

    /// Sends until the broker has it: a result must not be lost (the coordinator ignores duplicates). While it
    /// fails, the worker takes no more commands. False when cancelled first (the grace period of a shutdown ran
    /// out): then the command is handed back.
    func deliver(_ record: ProducerRecord, sender: ResilientProducer, delivery: DeliveryHealth) async -> Bool {
        var backoff = Duration.milliseconds(100)
        var failing = false
        defer { if failing { delivery.recovered() } }
        while !Task.isCancelled {
            do {
                try await sender.send(record)
                metrics.resultsSent.increment()
                return true
            } catch {
                metrics.deliveryFailures.increment()
                if !failing {
                    failing = true
                    delivery.failed()
                }
                logger.warning("could not deliver to \(record.topic)[\(record.partition ?? -1)]: \(error); trying again in \(backoff)")
                try? await Task.sleep(for: backoff)  // cancelled at the end of a shutdown's grace period: then the loop ends
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        return false
    }
}

/// Commands polled and not started yet, in the order they came (so each partition's are started in offset
/// order, and a command is only committed once everything before it on its partition is done).
final class CommandQueue: Sendable {
    private struct State {
        var commands = Deque<KafkaMessage>()
        /// The poll loop, waiting for fewer than `below` commands to wait (it is the only one that waits).
        var roomWaiter: (below: Int, continuation: CheckedContinuation<Void, Never>)?
    }
    private let state = Mutex(State())

    var count: Int { state.withLock { $0.commands.count } }

    func append(_ message: KafkaMessage) { state.withLock { $0.commands.append(message) } }

    /// The next command, marked started for the offset tracker.
    func take(_ tracker: OffsetTracker) -> KafkaMessage? {
        let (message, waiter) = state.withLock { s -> (KafkaMessage?, CheckedContinuation<Void, Never>?) in
            guard let m = s.commands.popFirst() else { return (nil, nil) }
            tracker.started(m)
            guard let w = s.roomWaiter, s.commands.count < w.below else { return (m, nil) }
            s.roomWaiter = nil
            return (m, w.continuation)
        }
        waiter?.resume()
        return message
    }

    /// Waits until fewer than `limit` commands wait, at most until `deadline` (or the task is cancelled).
    func waitForRoom(below limit: Int, until deadline: ContinuousClock.Instant) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.room(below: limit) }
            group.addTask { try? await Task.sleep(until: deadline) }  // cancelled when there is room first
            await group.next()
            group.cancelAll()
        }
    }

    private func room(below limit: Int) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.commands.count < limit || Task.isCancelled { return true }
                    s.roomWaiter = (limit, c)
                    return false
                }
                if ready { c.resume() }
            }
        } onCancel: {
            state.withLock { s -> CheckedContinuation<Void, Never>? in
                defer { s.roomWaiter = nil }
                return s.roomWaiter?.continuation
            }?.resume()
        }
    }

    /// The partitions that have commands waiting for a slot.
    func partitions() -> Set<TopicPartition> { state.withLock { s in Set(s.commands.map(\.topicPartition)) } }

    /// Drops the waiting commands of these partitions (nil: all): they are redelivered to whoever owns them next.
    func drop(_ partitions: Set<TopicPartition>?) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let partitions { s.commands.removeAll { partitions.contains($0.topicPartition) } } else { s.commands.removeAll() }
            guard let w = s.roomWaiter, s.commands.count < w.below else { return nil }
            s.roomWaiter = nil
            return w.continuation
        }
        waiter?.resume()
    }
}

/// How many deliveries are failing right now: while any is, the worker takes no more commands.
final class DeliveryHealth: Sendable {
    private let count = Atomic(0)
    var failing: Int { count.load(ordering: .relaxed) }
    func failed() { count.add(1, ordering: .relaxed) }
    func recovered() { count.subtract(1, ordering: .relaxed) }
}

/// Sends a command's heartbeats, no closer together than a third of its heartbeat timeout (and a second).
final class HeartbeatSender: Sendable {
    let command: CommandMessage
    let sender: ResilientProducer
    let logger: Logger
    let interval: Duration
    let last = Mutex<ContinuousClock.Instant?>(nil)
    /// The handler's span: heartbeats carry its context, as its result does (or the unsampled context as it came).
    let trace: ServiceContext?
    let passOn: [KafkaHeader]
    let tracer: any Tracer
    /// When the worker started the attempt (milliseconds since the epoch).
    let startedAt = WallClock.millis()

    init(command: CommandMessage, sender: ResilientProducer, logger: Logger, trace: ServiceContext?, passOn: [KafkaHeader], tracer: any Tracer) {
        self.command = command
        self.sender = sender
        self.logger = logger
        self.trace = trace
        self.passOn = passOn
        self.tracer = tracer
        interval = max(.seconds(1), .milliseconds(command.heartbeatTimeout ?? 3000) / 3)
    }

    /// Reports the attempt's start: its first heartbeat, unless the handler sent one already.
    func reportStart() async {
        guard last.withLock({ $0 == nil }) else { return }
        await send(nil)
    }

    func send(_ details: JSON?) async {
        guard !command.isCompensation else { return }
        let due = last.withLock { last -> Bool in
            if let last, ContinuousClock.now - last < interval { return false }
            last = .now
            return true
        }
        guard due else { return }
        let message = HeartbeatMessage(command, details: details)
        var headers = Wire.headers(.stepHeartbeat) + passOn
        if let trace { tracer.inject(trace, into: &headers, using: KafkaHeadersInjector()) }
        do {
            try await sender.send(
                ProducerRecord(
                    topic: command.replyTo.topic, partition: command.replyTo.partition, key: Data(command.instanceID.utf8), value: Wire.encode(message),
                    headers: headers))
        } catch {
            logger.warning("could not send a heartbeat: \(error)")
        }
    }
}

/// Which offsets may be committed: per partition, everything below the oldest command still in flight.
final class OffsetTracker: Sendable {
    struct State {
        var inFlight: [TopicPartition: Set<Int64>] = [:]
        var next: [TopicPartition: Int64] = [:]
        var committed: [TopicPartition: Int64] = [:]
    }
    let state = Mutex(State())

    func started(_ m: KafkaMessage) {
        state.withLock {
            $0.inFlight[m.topicPartition, default: []].insert(m.offset)
            $0.next[m.topicPartition] = max($0.next[m.topicPartition] ?? 0, m.offset + 1)
        }
    }

    func finished(_ m: KafkaMessage) {
        state.withLock { _ = $0.inFlight[m.topicPartition]?.remove(m.offset) }
    }

    /// - Parameter past: fetch positions of partitions with no command waiting or running: everything before
    ///   them is done (what lies between the last command and the position is transaction markers).
    func committable(of partitions: Set<TopicPartition>?, past: [TopicPartition: Int64] = [:]) -> [TopicPartitionOffset] {
        state.withLock { s in
            s.next.compactMap { tp, next in
                guard partitions?.contains(tp) ?? true else { return nil }
                let running = s.inFlight[tp]?.min()
                let offset = running ?? max(next, past[tp] ?? next)
                return offset > (s.committed[tp] ?? -1) ? TopicPartitionOffset(tp, offset: offset) : nil
            }
        }
    }

    func committed(_ offsets: [TopicPartitionOffset]) {
        state.withLock { s in for o in offsets { s.committed[o.topicPartition] = o.offset } }
    }

    /// Whether no command of the partition is running.
    func isIdle(_ tp: TopicPartition) -> Bool { state.withLock { $0.inFlight[tp]?.isEmpty ?? true } }

    /// For each of these partitions, the offset the group will resume from: the committed one, else the first
    /// polled (what `consumer lag` is measured against).
    func positions(of partitions: Set<TopicPartition>) -> [(TopicPartition, Int64)] {
        state.withLock { s in partitions.compactMap { tp in (s.committed[tp] ?? s.inFlight[tp]?.min() ?? s.next[tp]).map { (tp, $0) } } }
    }

    func forget(_ partitions: Set<TopicPartition>) {
        state.withLock { s in
            for tp in partitions {
                s.next[tp] = nil
                s.committed[tp] = nil
                s.inFlight[tp] = nil
            }
        }
    }
}

/// A count of in-flight commands that a stopping worker can wait on.
final class Limiter: Sendable {
    struct State {
        var used = 0
        var expired = false
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }
    let limit: Int
    let state = Mutex(State())
    init(_ limit: Int) { self.limit = max(1, limit) }

    var free: Int { state.withLock { limit - $0.used } }
    var inFlight: Int { state.withLock { $0.used } }
    func take() { state.withLock { $0.used += 1 } }

    func give() {
        let resume = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.used -= 1
            guard s.used == 0 else { return [] }
            defer { s.idleWaiters = [] }
            return s.idleWaiters
        }
        resume.forEach { $0.resume() }
    }

    func waitUntilIdle() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.used == 0 || s.expired { return true }
                s.idleWaiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }

    /// The grace period ran out: stop waiting for the in-flight ones.
    func expire() {
        let resume = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.expired = true
            defer { s.idleWaiters = [] }
            return s.idleWaiters
        }
        resume.forEach { $0.resume() }
    }
}

/// The commands this worker ran lately, by idempotency key and attempt, with the result it sent. A command
/// that comes again (redelivered after a rebalance, or a copy from an aborted coordinator transaction that a
/// broker such as Tansu shows) is answered with the same result instead of running the handler again. Bounded:
/// the oldest are forgotten first, and a new process remembers nothing (the idempotency key is the guarantee).
final class RecentCommands: Sendable {
    enum Seen { case new, running, answered(ProducerRecord) }
    struct State {
        var running: Set<String> = []
        var answered: [String: ProducerRecord] = [:]
        var order: Deque<String> = []
    }
    let capacity: Int
    let state = Mutex(State())

    init(capacity: Int) { self.capacity = capacity }

    func begin(_ key: String) -> Seen {
        state.withLock { s in
            if let record = s.answered[key] { return .answered(record) }
            if s.running.contains(key) { return .running }
            s.running.insert(key)
            return .new
        }
    }

    func finish(_ key: String, _ record: ProducerRecord) {
        state.withLock { s in
            s.running.remove(key)
            if s.answered.updateValue(record, forKey: key) == nil { s.order.append(key) }
            while s.order.count > capacity, let oldest = s.order.popFirst() { s.answered[oldest] = nil }
        }
    }

    func abandon(_ key: String) { _ = state.withLock { $0.running.remove(key) } }
}

/// Several workers in one process, run side by side: on a graceful shutdown they all stop at once (a
/// `ServiceGroup` stops its services one after the other, so a process with many pools would take the sum of
/// their grace periods). When one ends with an error, the others are cancelled and the error is thrown.
public struct StepWorkers: Service {
    public let workers: [StepWorker]
    public init(_ workers: [StepWorker]) { self.workers = workers }

    /// Every worker has joined its group.
    public var isReady: Bool { workers.allSatisfy(\.isReady) }

    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in workers { group.addTask { try await worker.run() } }
            try await group.waitForAll()
        }
    }
}

/// The worker's metrics (names and meaning: docs/observability.md).
final class WorkerMetrics: Sendable {
    let pool: String
    let commandsByStep: LabeledMetric<Counter>
    let handlerByStep: LabeledMetric<CoreMetrics.Timer>
    let queueWaitByStep: LabeledMetric<CoreMetrics.Timer>
    let inFlight: Gauge
    let waiting: Gauge
    let resultsSent: Counter
    let deliveryFailures: Counter
    let handedBack: Counter
    let lag: ConsumerLag
    let deadLetters: DeadLetterMetrics

    init(pool: String, group: String, factory: any MetricsFactory) {
        self.pool = pool
        commandsByStep = .counter("baton_worker_commands_total", labels: ["pool", "step", "outcome"], factory: factory)
        handlerByStep = .timer("baton_worker_handler_seconds", labels: ["pool", "step"], factory: factory)
        queueWaitByStep = .timer("baton_worker_queue_wait_seconds", labels: ["pool", "step"], factory: factory)
        inFlight = Gauge(label: "baton_worker_commands_in_flight", dimensions: [("pool", pool)], factory: factory)
        waiting = Gauge(label: "baton_worker_commands_waiting", dimensions: [("pool", pool)], factory: factory)
        resultsSent = Counter(label: "baton_worker_results_sent_total", dimensions: [("pool", pool)], factory: factory)
        deliveryFailures = Counter(label: "baton_worker_delivery_failures_total", dimensions: [("pool", pool)], factory: factory)
        handedBack = Counter(label: "baton_worker_handed_back_total", dimensions: [("pool", pool)], factory: factory)
        lag = ConsumerLag(group: group, factory: factory)
        deadLetters = DeadLetterMetrics(source: "worker", factory: factory)
        inFlight.record(0)
        waiting.record(0)
        handedBack.increment(by: 0)
        resultsSent.increment(by: 0)
        deliveryFailures.increment(by: 0)
        deadLetters.prepare()
    }

    /// Steps whose series exist already.
    private let steps = Mutex<Set<String>>([])

    /// A step's counter for an outcome; the first time a step is seen, every outcome's series is made at 0 (so
    /// that its first failure shows as an increase).
    func commands(_ step: String, _ outcome: String) -> Counter {
        if steps.withLock({ $0.insert(step).inserted }) {
            for o in ["completed", "failed", "handed_back", "late", "repeated"] { commandsByStep(pool, step, o).increment(by: 0) }
        }
        return commandsByStep(pool, step, outcome)
    }
    func handler(_ step: String) -> CoreMetrics.Timer { handlerByStep(pool, step) }
    func queueWait(_ step: String) -> CoreMetrics.Timer { queueWaitByStep(pool, step) }
}

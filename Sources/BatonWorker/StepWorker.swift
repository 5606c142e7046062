import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// What a handler gets: the command, with its input, attempt and idempotency key.
public struct StepContext: Sendable {
    public let command: CommandMessage
    public let logger: Logger
    public var input: JSON { command.input }
    public var instanceID: String { command.instanceID }
    public var step: String { command.step }
    public var item: Int? { command.item }
    public var attempt: Int { command.attempt }
    /// The same for every attempt of a step (or item): use it to make side effects happen once.
    public var idempotencyKey: String { command.idempotencyKey }
    public var isCompensation: Bool { command.isCompensation }
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
    /// Commands handled at once.
    public var concurrency = 32
    public var sessionTimeout: Duration = .seconds(10)
    public var maxPollInterval: Duration = .seconds(30)
    /// On graceful shutdown, in-flight commands get this long to finish; the rest are handed back.
    public var shutdownGrace: Duration = .seconds(10)
    /// Partitions of the command topic, if the worker has to create it.
    public var commandTopicPartitions = CommandTopics.defaultPartitions

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
public final class StepWorker: Service, Sendable {
    public let configuration: WorkerConfiguration
    let handler: StepHandler
    let logger: Logger
    let stopping = Atomic<Bool>(false)

    public init(configuration: WorkerConfiguration, logger: Logger, handler: @escaping StepHandler) {
        self.configuration = configuration
        self.handler = handler
        self.logger = logger
    }

    public func run() async throws {
        let names = configuration.names
        let topic = names.commands(configuration.pool)
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        try await CommandTopics(admin: admin, partitions: configuration.commandTopicPartitions, logger: logger).ensure([topic])
        let consumer = try KafkaConsumer(
            configuration: .engineMember(
                client: configuration.client, group: names.workerGroup(configuration.pool), sessionTimeout: configuration.sessionTimeout,
                maxPollInterval: configuration.maxPollInterval),
            logger: logger)
        var producerConfiguration = KafkaProducerConfiguration(client: configuration.client)
        producerConfiguration.linger = .milliseconds(5)
        let producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        try consumer.subscribe([topic])
        logger.info("worker started", metadata: ["pool": "\(configuration.pool)", "topic": "\(topic)"])

        try await withGracefulShutdownHandler {
            try await self.loop(consumer: consumer, producer: producer)
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .releasing)
        }
        await producer.close()
        await consumer.close()
        logger.info("worker stopped", metadata: ["pool": "\(configuration.pool)"])
    }

    /// Asks the worker to stop as on a graceful shutdown.
    public func stop() { stopping.store(true, ordering: .releasing) }

    func loop(consumer: KafkaConsumer, producer: KafkaProducer) async throws {
        let tracker = OffsetTracker()
        let limiter = Limiter(configuration.concurrency)
        var lastCommit = ContinuousClock.now
        await withDiscardingTaskGroup { group in
            while !stopping.load(ordering: .acquiring) && !Task.isCancelled {
                await limiter.waitForRoom()
                let events: [KafkaConsumerEvent]
                do {
                    events = try await consumer.poll(maxEvents: max(1, limiter.free), timeout: .milliseconds(100))
                } catch {
                    logger.error("poll failed: \(error)")
                    break
                }
                for event in events {
                    switch event {
                    case .message(let message):
                        tracker.started(message)
                        limiter.take()
                        group.addTask {
                            // A command handed back (cancelled at the end of the grace period) stays uncommitted,
                            // so that the next owner of its partition runs it.
                            if await self.handle(message, producer: producer) { tracker.finished(message) }
                            limiter.give()
                        }
                    case .revoked(let partitions, _):
                        // Commit what is done for them while we still may; the rest is redelivered to the new owner.
                        try? await consumer.commit(tracker.committable(of: Set(partitions)))
                        tracker.forget(Set(partitions))
                    case .error(let error):
                        logger.warning("consumer: \(error)")
                    default:
                        break
                    }
                }
                if ContinuousClock.now - lastCommit > .milliseconds(50) {
                    await commit(tracker, consumer)
                    lastCommit = .now
                }
            }
            // Graceful stop: in-flight commands get the grace period; the group waits for them.
            let grace = configuration.shutdownGrace
            group.addTask {
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
                logger.warning(
                    "grace period over: handing back the commands still running (they are redelivered)",
                    metadata: ["pool": "\(configuration.pool)", "commands": "\(unfinished)"])
            }
            group.cancelAll()
        }
        await commit(tracker, consumer)
    }

    func commit(_ tracker: OffsetTracker, _ consumer: KafkaConsumer) async {
        let offsets = tracker.committable(of: nil)
        guard !offsets.isEmpty else { return }
        do {
            try await consumer.commit(offsets)
            tracker.committed(offsets)
        } catch {
            logger.debug("commit failed (a rebalance?): \(error)")
        }
    }

    /// Runs one command and delivers its result; a record it cannot use goes to the dead-letter topic.
    /// Returns whether it is done with the record (false: handed back, to be redelivered).
    func handle(_ message: KafkaMessage, producer: KafkaProducer) async -> Bool {
        let names = configuration.names
        let command: CommandMessage
        do {
            guard let value = message.value else { throw Wire.DecodeError("a record without a value") }
            let kind = try Wire.kind(of: value)
            guard kind == .stepCommand || kind == .compensationCommand else {
                throw Wire.DecodeError("a '\(kind.rawValue)' record does not belong on a command topic")
            }
            command = try Wire.decode(CommandMessage.self, from: value)
        } catch {
            logger.warning("command sent to the dead-letter topic", metadata: ["offset": "\(message.partition)/\(message.offset)", "error": "\(error)"])
            return await deliver(deadLetterRecord(message, reason: (error as? Wire.DecodeError)?.reason ?? "\(error)", topic: names.deadletter), producer: producer)
        }
        var logger = self.logger
        logger[metadataKey: "instance"] = "\(command.instanceID)"
        logger[metadataKey: "step"] = "\(command.step)"
        logger[metadataKey: "attempt"] = "\(command.attempt)"
        logger.debug("handling command", metadata: ["instance": "\(command.instanceID)", "age_ms": "\(message.timestamp.map { Int64(Date().timeIntervalSince1970 * 1000) - $0 } ?? -1)"])
        let result: ResultMessage
        do {
            let output = try await handler(StepContext(command: command, logger: logger))
            result = .completed(command, output: output)
        } catch let failure as StepFailure {
            result = .failed(command, error: failure.message, retryable: failure.retryable)
        } catch is CancellationError {
            return false  // handed back: not committed, so redelivered
        } catch {
            result = .failed(command, error: "\(error)", retryable: true)
        }
        return await deliver(
            ProducerRecord(
                topic: command.replyTo.topic, partition: command.replyTo.partition, key: Data(command.instanceID.utf8), value: Wire.encode(result),
                headers: [KafkaHeader(key: WireHeaders.kind, string: result.kind.rawValue), KafkaHeader(key: WireHeaders.version, string: String(Wire.version))]),
            producer: producer)
    }

    /// Sends until the broker has it: a result must not be lost (the coordinator ignores duplicates). False
    /// when cancelled first (the grace period of a shutdown ran out): then the command is handed back.
    func deliver(_ record: ProducerRecord, producer: KafkaProducer) async -> Bool {
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                try await producer.send(record)
                return true
            } catch {
                logger.warning("could not deliver to \(record.topic): \(error); retrying")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        return false
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

    func committable(of partitions: Set<TopicPartition>?) -> [TopicPartitionOffset] {
        state.withLock { s in
            s.next.compactMap { tp, next in
                guard partitions?.contains(tp) ?? true else { return nil }
                let offset = s.inFlight[tp]?.min() ?? next
                return offset > (s.committed[tp] ?? -1) ? TopicPartitionOffset(tp, offset: offset) : nil
            }
        }
    }

    func committed(_ offsets: [TopicPartitionOffset]) {
        state.withLock { s in for o in offsets { s.committed[o.topicPartition] = o.offset } }
    }

    func forget(_ partitions: Set<TopicPartition>) {
        state.withLock { s in
            for tp in partitions {
                s.next[tp] = nil
                s.committed[tp] = nil
            }
        }
    }
}

/// A counting limit on in-flight commands that a loop can wait on.
final class Limiter: Sendable {
    struct State {
        var used = 0
        var expired = false
        var waiters: [CheckedContinuation<Void, Never>] = []
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
            var out = s.waiters
            s.waiters = []
            if s.used == 0 {
                out += s.idleWaiters
                s.idleWaiters = []
            }
            return out
        }
        resume.forEach { $0.resume() }
    }

    func waitForRoom() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.used < limit { return true }
                s.waiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
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

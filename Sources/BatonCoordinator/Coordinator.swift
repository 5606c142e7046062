import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import HeapModule
import Logging
import ServiceLifecycle

public struct CoordinatorConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    public var names: TopicNames
    /// At most this many events go into one transaction.
    public var maxBatch = 2000
    /// How long a poll waits when nothing is due.
    public var idleWait: Duration = .milliseconds(100)
    public var sessionTimeout: Duration = .seconds(10)
    public var maxPollInterval: Duration = .seconds(30)
    /// Partitions of a command topic the coordinator creates for a new worker pool.
    public var commandTopicPartitions = CommandTopics.defaultPartitions
    /// Overrides the clock (milliseconds since the epoch); for tests that move time.
    public var clock: @Sendable () -> Timestamp = { Timestamp(Date().timeIntervalSince1970 * 1000) }
    /// Names this coordinator in the records it writes.
    public var identity = "\(ProcessInfo.processInfo.hostName)/\(ProcessInfo.processInfo.processIdentifier)"

    public init(client: KafkaClientConfiguration, names: TopicNames) {
        self.client = client
        self.names = names
    }
}

/// The saga coordinator: a member of the coordinators' group on the events topic. For each events
/// partition it owns, it rebuilds the instances from the same partition of the state topic, then applies
/// events (and due timers) in batches, writing commands, state snapshots, tasks, alerts and the consumed
/// offsets in one Kafka transaction per partition and batch. Its transactional id is the partition's, so
/// whoever takes a partition over fences the previous owner.
public final class Coordinator: Service, Sendable {
    public let configuration: CoordinatorConfiguration
    let logger: Logger

    public init(configuration: CoordinatorConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let names = configuration.names
        let registry = try await DefinitionRegistry(client: configuration.client, names: names, logger: logger)
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        let commandTopics = CommandTopics(admin: admin, partitions: configuration.commandTopicPartitions, logger: logger)
        let consumer = try KafkaConsumer(
            configuration: .engineMember(
                client: configuration.client, group: names.coordinatorGroup, sessionTimeout: configuration.sessionTimeout,
                maxPollInterval: configuration.maxPollInterval),
            logger: logger)
        var timerConfiguration = KafkaProducerConfiguration(client: configuration.client)
        timerConfiguration.linger = .milliseconds(1)
        let timerProducer = try KafkaProducer(configuration: timerConfiguration, logger: logger)
        try consumer.subscribe([names.events])
        logger.info("coordinator started", metadata: ["group": "\(names.coordinatorGroup)", "topic": "\(names.events)"])

        do {
            try await cancelWhenGracefulShutdown {
                try await self.loop(consumer: consumer, registry: registry, commandTopics: commandTopics, timerProducer: timerProducer)
            }
        } catch is CancellationError {
        }
        await consumer.close()
        await timerProducer.close()
        await registry.close()
        logger.info("coordinator stopped")
    }

    func loop(consumer: KafkaConsumer, registry: DefinitionRegistry, commandTopics: CommandTopics, timerProducer: KafkaProducer) async throws {
        let names = configuration.names
        var owned: [Int32: OwnedPartition] = [:]
        // Offsets on the events topic are contiguous (no transaction markers): a jump means records the broker
        // has not made readable yet. Read from the expected offset again (a bounded number of times).
        var expected: [Int32: Int64] = [:]
        var rewinds: [Int32: (offset: Int64, tries: Int)] = [:]
        while !Task.isCancelled {
            let now = self.configuration.clock()
            let nextDue = owned.values.compactMap { $0.nextDue }.min()
            let wait = nextDue.map { Duration.milliseconds(max(0, min($0 - now, Int64(self.configuration.idleWait.inMilliseconds)))) } ?? self.configuration.idleWait
            let events = try await consumer.poll(maxEvents: self.configuration.maxBatch, timeout: wait)
            let polledAt = ContinuousClock.now
            var batches: [Int32: [KafkaMessage]] = [:]
            var rewind: [Int32: Int64] = [:]
            for event in events {
                switch event {
                case .assigned(let partitions):
                    // Rebuild the new partitions in parallel; none of their events is processed before.
                    let new = partitions.filter { $0.topic == names.events && owned[$0.partition] == nil }.map(\.partition)
                    let configuration = self.configuration
                    let logger = self.logger
                    try await withThrowingTaskGroup(of: (Int32, OwnedPartitionBox).self) { group in
                        for p in new {
                            group.addTask {
                                let taken = try await OwnedPartition.take(
                                    p, configuration: configuration, registry: registry, commandTopics: commandTopics, timerProducer: timerProducer,
                                    group: consumer, logger: logger)
                                return (p, OwnedPartitionBox(taken))
                            }
                        }
                        for try await (p, box) in group { owned[p] = box.partition }
                    }
                case .revoked(let partitions, let lost):
                    for tp in partitions where tp.topic == names.events {
                        batches[tp.partition] = nil
                        expected[tp.partition] = nil
                        rewind[tp.partition] = nil
                        if let partition = owned.removeValue(forKey: tp.partition) {
                            await partition.release()
                            self.logger.info("released partition", metadata: ["partition": "\(tp.partition)", "lost": "\(lost)"])
                        }
                    }
                case .message(let m):
                    if rewind[m.partition] != nil { continue }  // read again after the rewind
                    if let next = expected[m.partition], m.offset > next {
                        let tries = rewinds[m.partition].map { $0.offset == next ? $0.tries + 1 : 1 } ?? 1
                        if tries <= 3 {
                            self.logger.warning(
                                "offset gap on the events topic; reading again", metadata: ["partition": "\(m.partition)", "expected": "\(next)", "got": "\(m.offset)", "try": "\(tries)"])
                            rewinds[m.partition] = (next, tries)
                            rewind[m.partition] = next
                            continue
                        }
                        self.logger.error("offset gap on the events topic persists; going on", metadata: ["partition": "\(m.partition)", "expected": "\(next)", "got": "\(m.offset)"])
                    }
                    expected[m.partition] = m.offset + 1
                    batches[m.partition, default: []].append(m)
                case .error(let error):
                    self.logger.warning("consumer: \(error)")
                case .partitionEOF:
                    break
                }
            }
            for (p, offset) in rewind {
                try? await consumer.seek([TopicPartitionOffset(names.events, p, offset: offset)])
            }
            try await registry.catchUp()
            let at = self.configuration.clock()
            // Each partition has its own transactional producer: their transactions run concurrently.
            var work: [(Int32, OwnedPartitionBox, [KafkaMessage])] = []
            for (p, partition) in owned {
                let messages = batches[p] ?? []
                let due = partition.dueTimers(at: at)
                if !due.isEmpty { try await partition.fire(due) }
                guard !messages.isEmpty else { continue }
                // Frozen since the poll (SIGSTOP, a stall) for long enough to have lost the partition? Then
                // write nothing: poll again, which tells. A broker that fences by transactional id would
                // refuse the writes anyway, but not every Kafka-compatible broker hides a fenced producer's.
                if ContinuousClock.now - polledAt > self.configuration.sessionTimeout / 3 {
                    self.logger.warning("stalled since the poll; re-reading the batch", metadata: ["partition": "\(p)"])
                    try? await consumer.seek([TopicPartitionOffset(messages[0].topicPartition, offset: messages[0].offset)])
                    expected[p] = messages[0].offset
                    continue
                }
                work.append((p, OwnedPartitionBox(partition), messages))
            }
            let failures = await withTaskGroup(of: (Int32, [KafkaMessage], (any Error)?).self) { group in
                for (p, box, messages) in work {
                    group.addTask {
                        do {
                            try await box.partition.process(messages, now: at, consumer: consumer)
                            return (p, messages, nil)
                        } catch {
                            return (p, messages, error)
                        }
                    }
                }
                var failures: [(Int32, [KafkaMessage], any Error)] = []
                for await (p, messages, error) in group { if let error { failures.append((p, messages, error)) } }
                return failures
            }
            for (p, messages, error) in failures {
                if let error = error as? KafkaError, !error.isFatal {
                    self.logger.warning("transaction failed; the batch will be read again", metadata: ["partition": "\(p)", "error": "\(error)"])
                    try? await consumer.seek([TopicPartitionOffset(messages[0].topicPartition, offset: messages[0].offset)])
                    expected[p] = messages[0].offset
                } else {
                    // Fenced, or the producer is unusable: stop owning the partition; a rebalance gives it to whoever may.
                    self.logger.error("partition \(p) lost its producer: \(error); pausing it until the group rebalances")
                    if let partition = owned.removeValue(forKey: p) { await partition.release() }
                    try? consumer.pause([TopicPartition(names.events, p)])
                }
            }
        }
    }
}

/// Hands a freshly built partition from the task that built it to the loop, which alone uses it from then on.
struct OwnedPartitionBox: @unchecked Sendable {
    let partition: OwnedPartition
    init(_ partition: OwnedPartition) { self.partition = partition }
}


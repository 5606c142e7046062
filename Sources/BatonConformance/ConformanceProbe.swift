import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Foundation
import Logging
import Synchronization

/// A record the worker under test wrote to the events topic, as read back, with what is wrong with it as a
/// record (the rest is checked against the command it answers).
struct ConformanceAnswer: Sendable {
    var message: KafkaMessage
    /// The instance it is for: from the value, else from the key.
    var instanceID: String?
    var result: ResultMessage?
    var isHeartbeat = false
    /// The heartbeat, when it is one that decodes.
    var heartbeat: HeartbeatMessage?
    /// Why the engine could not use it (not JSON, a wrong schema, a kind that is not an answer ...).
    var problem: String?

    init(_ message: KafkaMessage) {
        self.message = message
        instanceID = message.keyString
        guard let value = message.value else {
            problem = "a record without a value"
            return
        }
        let kind: Wire.Kind
        do { kind = try Wire.kind(of: value) } catch {
            problem = "unreadable: \(error.reason)"
            return
        }
        switch kind {
        case .stepHeartbeat:
            isHeartbeat = true
            // A heartbeat is only counted and its token checked, never judged otherwise: one that does not decode
            // just names no instance.
            if let heartbeat = try? Wire.decode(HeartbeatMessage.self, from: value) {
                instanceID = heartbeat.instanceID
                self.heartbeat = heartbeat
            }
        case .stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed:
            do {
                let result = try Wire.decode(ResultMessage.self, from: value)
                self.result = result
                instanceID = result.instanceID
                // What a coordinator does with it: refused records go to the dead-letter topic.
                _ = try EventMessage.decode(value)
            } catch {
                problem = "the engine refuses it: \(error.reason)"
            }
        default:
            problem = "a '\(kind.rawValue)' record is not an answer to a command"
        }
    }
}

/// The tool's side of the conversation: writes commands to the pool's command topic, reads back everything
/// on the events and dead-letter topics, and asks what the pool's group committed.
final class ConformanceProbe: Sendable {
    struct Seen {
        var answers: [ConformanceAnswer] = []
        var deadLetters: [KafkaMessage] = []
        var sentinels: Set<String> = []
        var failure: String?
    }

    static let sentinelKey = "baton-conformance-sentinel"

    let names: TopicNames
    let pool: String
    let commandTopic: String
    let commandPartitions: Int
    let eventsPartitions: Int
    let deadletterPartitions: Int
    let producer: KafkaProducer
    let reader: KafkaConsumer
    let offsets: KafkaConsumer
    let seen = Mutex(Seen())
    let reading = Mutex<Task<Void, Never>?>(nil)
    let logger: Logger

    init(
        client: KafkaClientConfiguration, names: TopicNames, pool: String, commandPartitions: Int, eventsPartitions: Int, deadletterPartitions: Int,
        logger: Logger
    ) throws {
        self.names = names
        self.pool = pool
        self.logger = logger
        commandTopic = names.commands(pool)
        self.commandPartitions = commandPartitions
        self.eventsPartitions = eventsPartitions
        self.deadletterPartitions = deadletterPartitions
        var producerConfiguration = KafkaProducerConfiguration(client: client)
        producerConfiguration.deliveryTimeout = .seconds(20)
        producer = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        reader = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client, groupID: nil), logger: logger)
        // A consumer of the worker's group that never joins it: it only asks what the group committed.
        offsets = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client, groupID: names.workerGroup(pool)), logger: logger)
    }

    /// Reads the events and dead-letter topics from their beginning, in the background, until `close`.
    func startReading() throws {
        var partitions = (0..<Int32(eventsPartitions)).map { TopicPartitionOffset(names.events, $0, offset: TopicPartitionOffset.beginning) }
        partitions += (0..<Int32(deadletterPartitions)).map { TopicPartitionOffset(names.deadletter, $0, offset: TopicPartitionOffset.beginning) }
        try reader.assign(partitions)
        let task = Task { [self] in
            while !Task.isCancelled {
                do {
                    let events = try await reader.poll(maxEvents: 1000, timeout: .milliseconds(100))
                    seen.withLock { s in
                        for event in events {
                            guard case .message(let m) = event else { continue }
                            if m.keyString == Self.sentinelKey {
                                s.sentinels.insert(String(decoding: m.value ?? Data(), as: UTF8.self))
                            } else if m.topic == names.deadletter {
                                s.deadLetters.append(m)
                            } else {
                                s.answers.append(ConformanceAnswer(m))
                            }
                        }
                    }
                } catch {
                    seen.withLock { $0.failure = "reading \(names.events) failed: \(error)" }
                    return
                }
            }
        }
        reading.withLock { $0 = task }
    }

    func close() async {
        let task = reading.withLock { $0 }
        task?.cancel()
        await task?.value
        await reader.close()
        await offsets.close()
        await producer.close(timeout: .seconds(5))
    }

    /// Throws when reading back stopped.
    func checkHealthy() throws {
        if let failure = seen.withLock({ $0.failure }) { throw ConformanceFailure(failure) }
    }

    func answers(for instanceID: String) -> [ConformanceAnswer] {
        seen.withLock { $0.answers.filter { $0.instanceID == instanceID && !$0.isHeartbeat } }
    }

    /// The heartbeats read back for an instance, in the order they came.
    func heartbeats(for instanceID: String) -> [HeartbeatMessage] {
        seen.withLock { $0.answers.compactMap { $0.instanceID == instanceID ? $0.heartbeat : nil } }
    }

    /// The heartbeat records read back for an instance (with their timestamps), in the order they came.
    func heartbeatRecords(for instanceID: String) -> [(heartbeat: HeartbeatMessage, at: Int64?)] {
        seen.withLock { $0.answers.compactMap { a in a.instanceID == instanceID ? a.heartbeat.map { ($0, a.message.timestamp) } : nil } }
    }

    var deadLetters: [KafkaMessage] { seen.withLock { $0.deadLetters } }

    /// Writes a record to a partition of the command topic; its offset once the broker has it.
    func send(_ value: Data, key: String, partition: Int32, headers: [KafkaHeader] = []) async throws -> Int64 {
        let report = try await producer.send(
            ProducerRecord(topic: commandTopic, partition: partition, key: Data(key.utf8), value: value, headers: headers))
        return report.offset
    }

    /// What the pool's group committed on these partitions (-1 where nothing).
    func committed(_ partitions: [Int32]) async throws -> [Int32: Int64] {
        let result = try await offsets.committed(partitions.map { TopicPartition(commandTopic, $0) }, timeout: .seconds(5))
        return Dictionary(result.map { ($0.topicPartition.partition, max(-1, $0.offset)) }) { a, _ in a }
    }

    /// Writes a marker to every partition of the events and dead-letter topics and returns once all of them
    /// are read back: every record written there before this call has been read by then.
    func settle(timeout: Duration) async throws {
        let id = UUID().uuidString
        var expected = Set<String>()
        for (topic, count) in [(names.events, eventsPartitions), (names.deadletter, deadletterPartitions)] {
            for p in 0..<Int32(count) {
                let marker = "\(id)/\(topic)/\(p)"
                _ = try await producer.send(ProducerRecord(topic: topic, partition: p, key: Data(Self.sentinelKey.utf8), value: Data(marker.utf8)))
                expected.insert(marker)
            }
        }
        let deadline = ContinuousClock.now + timeout
        while !seen.withLock({ expected.isSubset(of: $0.sentinels) }) {
            try checkHealthy()
            guard ContinuousClock.now < deadline else { throw ConformanceFailure("could not read \(names.events) and \(names.deadletter) back to their end within \(timeout)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// Why a case failed (or the run could not go on).
struct ConformanceFailure: Error, CustomStringConvertible {
    var problems: [String]
    init(_ problem: String) { problems = [problem] }
    init(problems: [String]) { self.problems = problems }
    var description: String { problems.joined(separator: "; ") }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Logging

/// `baton tail`: reads one engine topic, every partition, and hands each batch of records, decoded, to its caller.
public struct TopicTail: Sendable {
    public enum Start: String, Sendable, CaseIterable {
        /// The first record still on the topic.
        case beginning
        /// What is written from now on.
        case end
    }

    public var client: KafkaClientConfiguration
    public var names: TopicNames
    public var topic: TailTopic
    public var formatter: RecordFormatter
    let logger: Logger

    public init(client: KafkaClientConfiguration, names: TopicNames, topic: TailTopic, formatter: RecordFormatter = RecordFormatter(), logger: Logger) {
        self.client = client
        self.names = names
        self.topic = topic
        self.formatter = formatter
        self.logger = logger
    }

    /// Reads from `start` until the end of every partition (partition EOF), or, with `follow`, until the task is
    /// cancelled. Records are read as the engine reads them (read_committed).
    public func run(from start: Start, follow: Bool, _ body: ([TailRecord]) throws -> Void) async throws {
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        do {
            try await read(consumer, from: start, follow: follow, body)
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
    }

    func read(_ consumer: KafkaConsumer, from start: Start, follow: Bool, _ body: ([TailRecord]) throws -> Void) async throws {
        let name = topic.name(in: names)
        let metadata = try await consumer.metadata()
        guard let found = metadata.topics[name], found.error == nil, found.partitionCount > 0 else {
            throw ClientError(.notFound, missing(name, in: metadata))
        }
        let partitions = (0..<Int32(found.partitionCount)).map { TopicPartition(name, $0) }
        let offset = start == .beginning ? TopicPartitionOffset.beginning : TopicPartitionOffset.end
        try consumer.assign(partitions.map { TopicPartitionOffset($0, offset: offset) })
        var atEnd = Set<TopicPartition>()
        while !Task.isCancelled {
            var batch: [TailRecord] = []
            for event in try await consumer.poll(maxEvents: 1000, timeout: .milliseconds(100)) {
                switch event {
                case .message(let m): batch.append(formatter.decode(m, from: topic))
                case .partitionEOF(let partition, _): atEnd.insert(partition)
                case .error(let error): logger.warning("reading \(name): \(error)")
                default: break
                }
            }
            if !batch.isEmpty { try body(batch) }
            if !follow, atEnd.count == partitions.count { return }
        }
    }

    /// Why there is no topic `name`, and what there is instead.
    func missing(_ name: String, in metadata: ClusterMetadata) -> String {
        if case .commands(let pool) = topic {
            let prefix = names.commands("")
            let pools = metadata.topics.keys.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }.sorted()
            return "topic \(name) does not exist: no worker pool '\(pool)' in namespace '\(names.namespace)' (its topic is created when a definition that uses it is registered); "
                + (pools.isEmpty ? "there are no command topics" : "pools with a command topic: \(pools.joined(separator: ", "))")
        }
        return "topic \(name) does not exist: is the namespace '\(names.namespace)' right? (`baton topics apply` creates the engine's topics)"
    }
}

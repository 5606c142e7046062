import BatonKafka
import Logging
import Synchronization

/// Makes sure worker pools' command topics exist (creating the missing ones), and remembers their
/// partition counts. The coordinator, the workers and `definitions register` all go through it.
public final class CommandTopics: Sendable {
    /// Partitions of a command topic created here: as many as the events topic has by default, so that each
    /// command partition has one writer (see `partition(for:eventsPartition:eventsPartitions:key:)`) and a pool
    /// can grow to one worker per events partition.
    public static let defaultPartitions = 12

    let admin: KafkaAdmin
    let partitions: Int
    let logger: Logger
    let counts = Mutex<[String: Int]>([:])

    public init(admin: KafkaAdmin, partitions: Int = CommandTopics.defaultPartitions, logger: Logger) {
        self.admin = admin
        self.partitions = partitions
        self.logger = logger
    }

    /// The command partition for commands from an events partition (nil, the key's, if the topic's count is
    /// unknown): partition p of the events topic sends its commands to partition p of each command topic. So a
    /// transaction touches one partition per pool (each gets a commit marker: measured on Tansu, spreading an
    /// events partition's commands over four command partitions cost half the throughput), and, with at least as
    /// many command partitions as events partitions, no two producers write one command partition at once.
    public func partition(for topic: String, eventsPartition: Int32) -> Int32? {
        counts.withLock { $0[topic] }.map { Int32(Int(eventsPartition) % max(1, $0)) }
    }

    /// Creates the topics that do not exist yet; asks the brokers only about topics it has not seen.
    public func ensure(_ topics: Set<String>) async throws {
        let missing = topics.filter { topic in counts.withLock { $0[topic] == nil } }
        guard !missing.isEmpty else { return }
        var metadata = try await admin.metadata()
        let create = missing.filter { metadata.topics[$0] == nil }
        if !create.isEmpty {
            let results = try await admin.createTopics(create.sorted().map { NewTopic(name: $0, partitions: partitions) })
            for (topic, error) in results {
                if let error, error.code != .topicAlreadyExists { throw error }
                logger.info("created command topic", metadata: ["topic": "\(topic)"])
            }
            metadata = try await admin.metadata()
        }
        for topic in missing {
            guard let count = metadata.topics[topic]?.partitionCount, count > 0 else {
                throw KafkaError(code: .unknownTopicOrPartition, message: "command topic \(topic) has no partitions yet", isRetriable: true)
            }
            counts.withLock { $0[topic] = count }
        }
    }
}

extension KafkaConsumerConfiguration {
    /// A member of an engine consumer group (coordinators, a worker pool): read_committed, and heartbeats at a
    /// tenth of the session timeout. Its fetch wait is the client's (`KafkaClientConfiguration.fetchWait`).
    public static func engineMember(
        client: KafkaClientConfiguration, group: String, sessionTimeout: Duration, maxPollInterval: Duration
    ) -> KafkaConsumerConfiguration {
        var c = KafkaConsumerConfiguration(client: client, groupID: group)
        // A membership change moves only the partitions that change owner; the others keep going (docs/deploy.md).
        c.assignmentStrategy = .cooperativeSticky
        c.groupInstanceID = client.groupInstanceID
        c.isolationLevel = .readCommitted
        c.sessionTimeout = sessionTimeout
        c.maxPollInterval = maxPollInterval
        c.heartbeatInterval = .milliseconds(max(100, sessionTimeout.inMilliseconds / 10))
        return c
    }
}

import struct Foundation.Data

public struct TopicPartition: Hashable, Sendable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32
    public init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }
    public var description: String { "\(topic)[\(partition)]" }
}

/// A partition and an offset: the next record to read, as Kafka commits offsets.
public struct TopicPartitionOffset: Hashable, Sendable, CustomStringConvertible {
    public var topicPartition: TopicPartition
    public var offset: Int64
    public init(_ topicPartition: TopicPartition, offset: Int64) {
        self.topicPartition = topicPartition
        self.offset = offset
    }
    public init(_ topic: String, _ partition: Int32, offset: Int64) {
        self.init(TopicPartition(topic, partition), offset: offset)
    }
    public var description: String { "\(topicPartition)@\(offset)" }

    /// Special offsets understood by `seek` and `assign`.
    public static let beginning: Int64 = -2
    public static let end: Int64 = -1
    public static let stored: Int64 = -1000
}

public struct KafkaHeader: Hashable, Sendable {
    public var key: String
    public var value: Data?
    public init(key: String, value: Data?) {
        self.key = key
        self.value = value
    }
    public init(key: String, string: String) {
        self.init(key: key, value: Data(string.utf8))
    }
}

/// A record to produce. A nil `partition` lets the partitioner choose from the key (murmur2, as Java clients do).
public struct ProducerRecord: Sendable {
    public var topic: String
    public var partition: Int32?
    public var key: Data?
    public var value: Data?
    public var headers: [KafkaHeader]
    public var timestamp: Int64?

    public init(topic: String, partition: Int32? = nil, key: Data?, value: Data?, headers: [KafkaHeader] = [], timestamp: Int64? = nil) {
        self.topic = topic
        self.partition = partition
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
    }

    public init(topic: String, key: String?, value: Data?, headers: [KafkaHeader] = []) {
        self.init(topic: topic, key: key.map { Data($0.utf8) }, value: value, headers: headers)
    }
}

/// Where a record was stored.
public struct DeliveryReport: Sendable, Hashable {
    public var topicPartition: TopicPartition
    public var offset: Int64

    public init(topicPartition: TopicPartition, offset: Int64) {
        self.topicPartition = topicPartition
        self.offset = offset
    }
}

/// A record read from Kafka. A nil `value` is a tombstone.
public struct KafkaMessage: Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: Data?
    public var value: Data?
    public var headers: [KafkaHeader]
    /// Milliseconds since the epoch, as the producer or the broker set it; nil when the record has none.
    public var timestamp: Int64?

    /// A record as a consumer would return it: for tools and tests that format or aggregate records.
    public init(topic: String, partition: Int32, offset: Int64, key: Data?, value: Data?, headers: [KafkaHeader] = [], timestamp: Int64? = nil) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
    }

    public var topicPartition: TopicPartition { TopicPartition(topic, partition) }
    /// The offset to commit once this record is processed: the next one to read.
    public var nextOffset: TopicPartitionOffset { TopicPartitionOffset(topicPartition, offset: offset + 1) }

    public func header(_ key: String) -> Data? {
        headers.last(where: { $0.key == key })?.value ?? nil
    }
    public var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}

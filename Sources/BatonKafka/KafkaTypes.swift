@_exported import BatonRecords

/// What a consumer's poll yields, in the order it happened.
public enum KafkaConsumerEvent: Sendable {
    case message(KafkaMessage)
    /// Partitions given to this member by a group rebalance (or by `assign`).
    case assigned([TopicPartition])
    /// Partitions taken away by a group rebalance. `lost` when the member was already out of the group,
    /// so that whatever it wrote for them since may be fenced.
    case revoked([TopicPartition], lost: Bool)
    /// The consumer read to the end of a partition (only with `reportPartitionEOF`); `offset` is the next one.
    case partitionEOF(TopicPartition, offset: Int64)
    /// A non-fatal error worth knowing about (a broker went away); the consumer goes on.
    case error(KafkaError)
}

import BatonKafka

/// Whether a consumer reads a partition again when its offsets jump.
///
/// On Kafka a read_committed consumer sees offsets jump over transaction markers and aborted records: gaps
/// are normal and hold nothing to read. Tansu 0.6.0 (memory storage) also makes a produced batch's offsets
/// readable before the batch is stored, so a consumer at the end of a partition can be handed the next batch
/// and skip one a producer is still writing (docs/kafka-compatibility.md). Reading again from the first offset
/// of a gap, once, finds such records; a gap still there then is a real one.
public enum GapRereads: String, Sendable, CaseIterable {
    /// On brokers known to expose later records first (Tansu), off elsewhere. (A worker reads again only when
    /// its command partitions have more than one writer: fewer of them than events partitions.)
    case auto
    case on
    case off

    /// The cluster id of Tansu's default configuration.
    public static let tansuClusterID = "tansu_cluster"

    public func enabled(clusterID: String?) -> Bool {
        switch self {
        case .on: true
        case .off: false
        case .auto: clusterID == Self.tansuClusterID
        }
    }
}

/// Follows each partition's offsets; tells when a gap should be read again. Not thread-safe: one reader uses it.
public struct GapGuard: Sendable {
    public enum Verdict: Equatable, Sendable {
        /// Take the record.
        case take
        /// Read before, already taken (after reading again): drop it.
        case drop
        /// A gap not seen before: read the partition again from this offset, and drop this record.
        case reread(from: Int64)
        /// Take the record: it was missing when the gap it was in was first seen (the broker showed later
        /// records first). Worth a warning.
        case filledGap(from: Int64, to: Int64)
    }

    /// The next offset expected, per partition.
    var expected: [TopicPartition: Int64] = [:]
    /// The last gap read again, per partition.
    var known: [TopicPartition: (from: Int64, to: Int64)] = [:]
    public let enabled: Bool

    public init(enabled: Bool) { self.enabled = enabled }

    /// What to do with `message` (given in the order the consumer returned it).
    public mutating func check(_ message: KafkaMessage) -> Verdict {
        let tp = message.topicPartition
        guard enabled, let next = expected[tp] else {
            expected[tp] = message.offset + 1
            return .take
        }
        if message.offset < next { return .drop }
        if message.offset > next {
            if let gap = known[tp], gap.from == next, gap.to == message.offset {
                known[tp] = nil  // read again, and still there: nothing to read in it
            } else {
                known[tp] = (next, message.offset)
                return .reread(from: next)
            }
        } else if let gap = known[tp], gap.from == next {
            known[tp] = nil
            expected[tp] = message.offset + 1
            return .filledGap(from: gap.from, to: gap.to)
        }
        expected[tp] = message.offset + 1
        return .take
    }

    /// The next offset of a partition is known (where a consumer starts reading it), or nil: whatever comes first.
    public mutating func expect(_ offset: Int64?, on partition: TopicPartition) {
        expected[partition] = offset
        known[partition] = nil
    }

    /// Starts these partitions afresh (revoked, or read from elsewhere).
    public mutating func forget(_ partitions: Set<TopicPartition>) {
        for tp in partitions {
            expected[tp] = nil
            known[tp] = nil
        }
    }
}

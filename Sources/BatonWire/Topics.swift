/// Names of the engine's topics under a namespace (`baton` unless configured).
public struct TopicNames: Sendable, Hashable {
    public var namespace: String
    public init(namespace: String = "baton") { self.namespace = namespace }

    func name(_ suffix: String) -> String { namespace.isEmpty ? suffix : "\(namespace).\(suffix)" }

    public var events: String { name("events") }
    public var state: String { name("state") }
    public var outputs: String { name("outputs") }
    public var definitions: String { name("definitions") }
    public var tasks: String { name("tasks") }
    public var alerts: String { name("alerts") }
    public var notifications: String { name("notifications") }
    public var deadletter: String { name("deadletter") }
    /// Mailboxes (records from business topics meeting the instances waiting for them), co-partitioned with events.
    public var mailboxes: String { name("mailboxes") }
    /// The consumer group of `baton triggers` on the business topics.
    public var triggersGroup: String { name("triggers") }
    /// The command topic of a worker pool (a step's `worker`, else its `type`).
    public func commands(_ pool: String) -> String { name("commands.\(pool)") }
    /// The consumer group of a worker pool.
    public func workerGroup(_ pool: String) -> String { name("workers.\(pool)") }
    public var coordinatorGroup: String { name("coordinator") }
}

/// Kafka's default partitioner (the Java client's): murmur2 of the key bytes, made positive, modulo the
/// partition count. Every Baton producer places keyed records with it, so a client in any language that
/// uses the Java default (or librdkafka's `murmur2_random`) lands an instance's records on the same partition.
public enum KafkaPartitioner {
    public static func partition(forKey key: String, partitionCount: Int) -> Int32 {
        Int32(Int(murmur2(Array(key.utf8)) & 0x7fff_ffff) % max(1, partitionCount))
    }

    public static func murmur2(_ data: [UInt8]) -> UInt32 {
        let length = data.count
        let seed: UInt32 = 0x9747_b28c
        let m: UInt32 = 0x5bd1_e995
        let r: UInt32 = 24
        var h: UInt32 = seed ^ UInt32(truncatingIfNeeded: length)
        let quads = length / 4
        for i in 0..<quads {
            let i4 = i * 4
            var k = UInt32(data[i4]) | UInt32(data[i4 + 1]) << 8 | UInt32(data[i4 + 2]) << 16 | UInt32(data[i4 + 3]) << 24
            k = k &* m
            k ^= k >> r
            k = k &* m
            h = h &* m
            h ^= k
        }
        let rest = length % 4
        let tail = quads * 4
        if rest == 3 { h ^= UInt32(data[tail + 2]) << 16 }
        if rest >= 2 { h ^= UInt32(data[tail + 1]) << 8 }
        if rest >= 1 {
            h ^= UInt32(data[tail])
            h = h &* m
        }
        h ^= h >> 13
        h = h &* m
        h ^= h >> 15
        return h
    }
}

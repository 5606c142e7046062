import Foundation

/// Where the brokers are. `BATON_BROKERS=host:port[,host:port]` points every Baton program at a cluster.
public struct KafkaBrokers: Sendable, Hashable, CustomStringConvertible {
    public var bootstrapServers: String
    public init(_ bootstrapServers: String) { self.bootstrapServers = bootstrapServers }

    public static let defaultAddress = "127.0.0.1:9092"

    /// `BATON_BROKERS` from the environment, or the local broker's address.
    public static func fromEnvironment(_ environment: [String: String]) -> KafkaBrokers {
        let value = environment["BATON_BROKERS"]?.trimmingCharacters(in: .whitespaces) ?? ""
        return KafkaBrokers(value.isEmpty ? defaultAddress : value)
    }

    public var description: String { bootstrapServers }
}

/// Settings every client has. `additional` passes any librdkafka property through as it is
/// (security settings such as `security.protocol` and `sasl.*` for a managed cluster go here).
public struct KafkaClientConfiguration: Sendable {
    public var brokers: KafkaBrokers
    public var clientID: String = "baton"
    /// How long a metadata request, such as the connectivity check, may take before it fails.
    public var requestTimeout: Duration = .seconds(10)
    /// librdkafka debug contexts (`broker,protocol`, `cgrp`, ...), logged at debug level.
    public var debug: String?
    /// How long a consumer's fetch may wait at the broker for records (`fetch.wait.max.ms`). Every hop of a
    /// workflow passes through a fetch. Apache Kafka and Redpanda answer as soon as a record arrives, so a long
    /// wait costs them nothing; Tansu 0.6.0 holds each fetch for the whole wait, so a short one keeps latency
    /// low there, at the price of a fetch every few milliseconds per consumer while idle.
    public var fetchWait: Duration = .milliseconds(5)
    /// Static membership (`group.instance.id`, `BATON_INSTANCE_ID`): names this process in the engine's consumer
    /// groups so that, restarted within its session timeout, it gets its partitions back without a rebalance.
    /// Opt-in and unique per live process (two members with one id fence each other); only the engine's group
    /// members use it (`KafkaConsumerConfiguration.engineMember`), never readers outside a group.
    public var groupInstanceID: String?
    public var additional: [String: String] = [:]

    public init(brokers: KafkaBrokers) { self.brokers = brokers }

    var properties: [String: String] {
        var p: [String: String] = [
            "bootstrap.servers": brokers.bootstrapServers,
            "client.id": clientID,
            // Logs go to a queue that our own polling serves, so the log callback never runs on librdkafka's threads.
            "log.queue": "true",
            "socket.timeout.ms": String(max(1000, requestTimeout.milliseconds)),
            // No client creates a topic by asking for it: librdkafka producers ask the broker to by default, and
            // a topic made so gets the broker's defaults (partition count, no compaction), which would split
            // instances from their state. Engine topics come from `baton topics apply` only, command topics from
            // `CommandTopics` (the admin API). A record for a missing topic fails instead (unknown topic).
            "allow.auto.create.topics": "false",
        ]
        if let debug { p["debug"] = debug }
        return p
    }
}

public struct KafkaProducerConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    /// Set to make the producer transactional. Each live instance must use a distinct id: a new producer
    /// with the same id fences the old one.
    public var transactionalID: String?
    /// How long the producer waits to batch records (librdkafka's `linger.ms`).
    public var linger: Duration = .milliseconds(1)
    /// How long a record may wait for delivery, retries included, before it fails.
    public var deliveryTimeout: Duration = .seconds(30)
    /// Upper bound for a transaction before the broker aborts it.
    public var transactionTimeout: Duration = .seconds(60)
    public var compression: String = "none"
    public var additional: [String: String] = [:]

    public init(client: KafkaClientConfiguration) { self.client = client }

    var properties: [String: String] {
        var p = client.properties
        p["acks"] = "all"
        p["enable.idempotence"] = "true"
        p["linger.ms"] = String(linger.milliseconds)
        p["message.timeout.ms"] = String(deliveryTimeout.milliseconds)
        p["compression.codec"] = compression
        // Keyed records go where the Java client would put them (murmur2), so that producers in any
        // language agree on a key's partition.
        p["partitioner"] = "murmur2_random"
        if let transactionalID {
            p["transactional.id"] = transactionalID
            p["transaction.timeout.ms"] = String(transactionTimeout.milliseconds)
        }
        return p.merging(client.additional) { $1 }.merging(additional) { $1 }
    }
}

public struct KafkaConsumerConfiguration: Sendable {
    public enum IsolationLevel: String, Sendable { case readCommitted = "read_committed", readUncommitted = "read_uncommitted" }
    public enum AutoOffsetReset: String, Sendable { case earliest, latest }
    public enum AssignmentStrategy: String, Sendable {
        case range, roundRobin = "roundrobin", cooperativeSticky = "cooperative-sticky"
    }

    public var client: KafkaClientConfiguration
    /// The consumer group. Nil for a consumer that is given its partitions with `assign`.
    public var groupID: String?
    public var isolationLevel: IsolationLevel = .readCommitted
    public var autoOffsetReset: AutoOffsetReset = .earliest
    public var assignmentStrategy: AssignmentStrategy = .range
    /// Static membership (`group.instance.id`): see `KafkaClientConfiguration.groupInstanceID`.
    public var groupInstanceID: String?
    /// A member that sends no heartbeat for this long is removed from the group and its partitions move.
    public var sessionTimeout: Duration = .seconds(10)
    public var heartbeatInterval: Duration = .seconds(1)
    /// A member that does not poll for this long leaves the group. It also sets how long a rebalance may wait.
    public var maxPollInterval: Duration = .seconds(30)
    /// Report reaching the end of a partition as `KafkaConsumerEvent.partitionEOF`.
    public var reportPartitionEOF = false
    /// Offsets are committed only by `commit` (or in a producer's transaction), never automatically.
    public var enableAutoCommit = false
    public var additional: [String: String] = [:]

    public init(client: KafkaClientConfiguration, groupID: String?) {
        self.client = client
        self.groupID = groupID
    }

    var properties: [String: String] {
        var p = client.properties
        // librdkafka needs a group id even to `assign` partitions; a consumer outside any group gets one of
        // its own, which it never joins (no subscribe) and never commits to.
        p["group.id"] = groupID ?? "baton-unjoined-\(UUID().uuidString)"
        p["isolation.level"] = isolationLevel.rawValue
        p["auto.offset.reset"] = autoOffsetReset.rawValue
        p["partition.assignment.strategy"] = assignmentStrategy.rawValue
        if let groupInstanceID, groupID != nil { p["group.instance.id"] = groupInstanceID }
        p["session.timeout.ms"] = String(sessionTimeout.milliseconds)
        p["heartbeat.interval.ms"] = String(heartbeatInterval.milliseconds)
        p["max.poll.interval.ms"] = String(maxPollInterval.milliseconds)
        p["enable.partition.eof"] = reportPartitionEOF ? "true" : "false"
        p["enable.auto.commit"] = enableAutoCommit ? "true" : "false"
        p["enable.auto.offset.store"] = "false"
        p["fetch.wait.max.ms"] = String(max(1, client.fetchWait.milliseconds))
        return p.merging(client.additional) { $1 }.merging(additional) { $1 }
    }
}

extension Duration {
    /// Whole milliseconds, rounded down, at least 0.
    public var inMilliseconds: Int { milliseconds }

    /// In seconds, with fractions (negative for a negative duration).
    public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }

    var milliseconds: Int {
        let (seconds, attoseconds) = components
        return max(0, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }
}

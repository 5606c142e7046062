import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging

/// `baton watch`: follows the engine's topics and hands a `WatchFrame` to its caller every interval.
///
/// Where it reads from, and why:
/// - `events` and every `commands.<pool>` topic from the offsets their groups (the coordinators, each pool's
///   workers) have committed, so that it sees every record not consumed yet: the lag of a group is the number of
///   records past its committed offsets (counted, not subtracted: a command topic is written in transactions,
///   and each transaction's commit marker takes an offset that is no record to consume). A group that has
///   committed nothing is read from the beginning: all of it is still to consume. Records written before the
///   watch started count for lag only (`WatchStats`).
/// - `state` and `alerts` from their end: finished instances and alerts since the watch started.
///
/// The end of each partition is where its own consumer stops (partition EOF) rather than a ListOffsets query,
/// which Tansu answers wrongly after batched produce (docs/kafka-compatibility.md, gap 3). The committed offsets
/// are asked again for every frame, and the command topics again every few frames (a pool's topic appears when
/// a definition that uses it is registered).
public struct EngineWatch: Sendable {
    public var client: KafkaClientConfiguration
    public var names: TopicNames
    public var settings: WatchStats.Settings
    let logger: Logger

    public init(client: KafkaClientConfiguration, names: TopicNames, settings: WatchStats.Settings = WatchStats.Settings(), logger: Logger) {
        self.client = client
        self.names = names
        self.settings = settings
        self.logger = logger
    }

    public static func wallClock() -> Int64 { WallClock.millis() }

    /// Reads until `frames` frames were shown (nil: until the task is cancelled), calling `onFrame` once it has
    /// read to the end of every partition, then every interval.
    public func run(frames: Int?, readTimeout: Duration = .seconds(120), onFrame: (WatchFrame) throws -> Void) async throws {
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        var groups = GroupOffsets(client: client, logger: logger)
        do {
            try await follow(consumer, groups: &groups, frames: frames, readTimeout: readTimeout, onFrame: onFrame)
        } catch {
            await consumer.close()
            await groups.close()
            throw error
        }
        await consumer.close()
        await groups.close()
    }

    func follow(_ consumer: KafkaConsumer, groups: inout GroupOffsets, frames: Int?, readTimeout: Duration, onFrame: (WatchFrame) throws -> Void) async throws {
        var stats = WatchStats(startedAt: Self.wallClock(), settings: settings)
        let metadata = try await consumer.metadata()
        for topic in [names.events, names.state, names.alerts] where metadata.topics[topic] == nil {
            throw ClientError(.notFound, "topic \(topic) does not exist: is the namespace '\(names.namespace)' right? (`baton topics apply` creates the engine's topics)")
        }
        /// Where each partition is read from next, once known (from its records and its end).
        var positions: [TopicPartition: Int64] = [:]
        var assigned: [TopicPartitionOffset] = []
        var pools: Set<String> = []

        /// The partitions of a group's topic, from the group's committed offsets (the beginning where it has none).
        func fromCommitted(_ topic: String, group: String, label: String, in metadata: ClusterMetadata) async throws -> [TopicPartitionOffset] {
            let partitions = (0..<Int32(metadata.topics[topic]?.partitionCount ?? 0)).map { TopicPartition(topic, $0) }
            let offsets = try await groups.committed(group: group, partitions)
            stats.trackLag(of: topic, as: label)
            stats.setCommitted(offsets)
            return partitions.map { p in TopicPartitionOffset(p, offset: offsets[p].flatMap { $0 >= 0 ? $0 : nil } ?? TopicPartitionOffset.beginning) }
        }
        func fromEnd(_ topic: String) -> [TopicPartitionOffset] {
            (0..<Int32(metadata.topics[topic]?.partitionCount ?? 0)).map { TopicPartitionOffset(topic, $0, offset: TopicPartitionOffset.end) }
        }
        assigned += try await fromCommitted(names.events, group: names.coordinatorGroup, label: "coordinators (events)", in: metadata)
        for pool in commandPools(metadata) {
            pools.insert(pool)
            assigned += try await fromCommitted(names.commands(pool), group: names.workerGroup(pool), label: "workers \(pool)", in: metadata)
        }
        assigned += fromEnd(names.state) + fromEnd(names.alerts)
        try consumer.assign(assigned)

        // Read to the end of every partition first (what the groups have not consumed yet), then show the first frame.
        var behind = Set(assigned.map(\.topicPartition))
        let clock = ContinuousClock()
        let readDeadline = clock.now + readTimeout
        while !behind.isEmpty {
            if Task.isCancelled { return }
            guard clock.now < readDeadline else {
                throw ClientError(.unavailable, "could not read to the end of \(behind.sorted { $0.description < $1.description }.prefix(3).map(\.description).joined(separator: ", ")) within \(readTimeout)")
            }
            for event in try await consumer.poll(maxEvents: 5000, timeout: .milliseconds(100)) {
                take(event, into: &stats, positions: &positions) { behind.remove($0) }
            }
        }

        var shown = 0
        var nextFrame = clock.now
        while !Task.isCancelled {
            if clock.now >= nextFrame {
                for pool in pools {
                    let topic = names.commands(pool)
                    stats.setCommitted(try await groups.committed(group: names.workerGroup(pool), positions.keys.filter { $0.topic == topic }))
                }
                stats.setCommitted(try await groups.committed(group: names.coordinatorGroup, positions.keys.filter { $0.topic == names.events }))
                let now = Self.wallClock()
                stats.prune(now: now)
                try onFrame(stats.frame(now: now))
                shown += 1
                if let frames, shown >= frames { return }
                // The next frame one interval later; after a slow round, one interval from now (no frames in a burst).
                nextFrame = max(nextFrame + .milliseconds(settings.interval), clock.now + .milliseconds(settings.interval / 2))
                if shown % 5 == 0 {
                    // New pools since: read their topics from their groups' committed offsets (all of it if none).
                    let latest = try await consumer.metadata()
                    var added: [TopicPartitionOffset] = []
                    for pool in commandPools(latest) where !pools.contains(pool) {
                        pools.insert(pool)
                        added += try await fromCommitted(names.commands(pool), group: names.workerGroup(pool), label: "workers \(pool)", in: latest)
                    }
                    if !added.isEmpty {
                        // `assign` replaces the assignment: every partition already read continues where it was.
                        let current = assigned.map { TopicPartitionOffset($0.topicPartition, offset: positions[$0.topicPartition] ?? $0.offset) }
                        assigned = current + added
                        try consumer.assign(assigned)
                    }
                }
            }
            let wait = max(.milliseconds(1), min(.milliseconds(100), nextFrame - clock.now))
            for event in try await consumer.poll(maxEvents: 5000, timeout: wait) {
                take(event, into: &stats, positions: &positions) { _ in }
            }
        }
    }

    func take(_ event: KafkaConsumerEvent, into stats: inout WatchStats, positions: inout [TopicPartition: Int64], atEnd: (TopicPartition) -> Void) {
        switch event {
        case .message(let m):
            positions[m.topicPartition] = m.offset + 1
            stats.ingest(m, names: names, now: Self.wallClock())
        case .partitionEOF(let partition, let offset):
            positions[partition] = offset
            atEnd(partition)
        case .error(let error):
            logger.warning("reading the engine's topics: \(error)")
        default: break
        }
    }

    /// The pools whose command topics exist.
    func commandPools(_ metadata: ClusterMetadata) -> [String] {
        let prefix = names.commands("")
        return metadata.topics.keys.filter { $0.hasPrefix(prefix) && $0.count > prefix.count }.map { String($0.dropFirst(prefix.count)) }.sorted()
    }
}

/// What consumer groups have committed, asked through one consumer per group that never joins it.
struct GroupOffsets {
    let client: KafkaClientConfiguration
    let logger: Logger
    var consumers: [String: KafkaConsumer] = [:]

    init(client: KafkaClientConfiguration, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// The group's committed offsets of `partitions` (negative: none committed).
    mutating func committed(group: String, _ partitions: [TopicPartition]) async throws -> [TopicPartition: Int64] {
        guard !partitions.isEmpty else { return [:] }
        let consumer: KafkaConsumer
        if let known = consumers[group] {
            consumer = known
        } else {
            consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client, groupID: group), logger: logger)
            consumers[group] = consumer
        }
        let offsets = try await consumer.committed(partitions)
        return Dictionary(offsets.map { ($0.topicPartition, $0.offset) }) { a, _ in a }
    }

    func close() async {
        for consumer in consumers.values { await consumer.close() }
    }
}

import BatonKafka
import Logging

/// What `topics apply` found and did.
public struct TopicApplyReport: Sendable, CustomStringConvertible {
    public struct Drift: Sendable, Hashable, CustomStringConvertible {
        public var topic: String
        public var field: String
        public var declared: String
        public var actual: String
        public var reason: String
        public var description: String { "\(topic): \(field) is \(actual), declared \(declared): \(reason)" }
    }

    public var created: [String] = []
    public var unchanged: [String] = []
    public var drift: [Drift] = []
    /// Things that could not be checked, such as configs on a broker that does not describe them.
    public var notes: [String] = []

    public var isNoOp: Bool { created.isEmpty }
    public var description: String {
        var lines: [String] = []
        lines += created.map { "created   \($0)" }
        lines += unchanged.map { "ok        \($0)" }
        lines += drift.map { "DRIFT     \($0)" }
        lines += notes.map { "note      \($0)" }
        return lines.joined(separator: "\n")
    }
}

/// Creates the declared topics that are missing, leaves those that match, and reports drift without
/// changing anything that exists: `topics apply` never deletes a topic, never alters a config, and never
/// changes a partition count.
public struct TopicApplier: Sendable {
    public var admin: KafkaAdmin
    public var namespace: String
    /// Overrides every spec's replication factor (a single-broker development cluster wants 1).
    public var replicationFactor: Int?
    public var logger: Logger

    public init(admin: KafkaAdmin, namespace: String, replicationFactor: Int? = nil, logger: Logger) {
        self.admin = admin
        self.namespace = namespace
        self.replicationFactor = replicationFactor
        self.logger = logger
    }

    public func apply(_ specs: [TopicSpec]) async throws -> TopicApplyReport {
        var report = TopicApplyReport()
        let metadata = try await admin.metadata()
        var missing: [NewTopic] = []
        var existing: [(TopicSpec, String)] = []
        for spec in specs {
            let topic = spec.topicName(namespace: namespace)
            if let found = metadata.topics[topic], found.error == nil {
                existing.append((spec, topic))
                if found.partitionCount != spec.partitions {
                    report.drift.append(
                        .init(
                            topic: topic, field: "partitions", declared: "\(spec.partitions)", actual: "\(found.partitionCount)",
                            reason: spec.isKeyed
                                ? "not changed: records are keyed by \(spec.key.rawValue) and a key's partition is fixed when the topic is created; changing the count would move keys away from their history (and from co-partitioned topics). Keep the declared count as it is, or move to a new namespace"
                                : "not changed: topics apply never changes partition counts"))
                }
            } else {
                missing.append(
                    NewTopic(name: topic, partitions: spec.partitions, replicationFactor: replicationFactor ?? spec.replicationFactor ?? -1, configs: spec.configs))
            }
        }
        if !missing.isEmpty {
            let results = try await admin.createTopics(missing)
            for topic in missing {
                switch results[topic.name] {
                case .some(.none):
                    report.created.append(topic.name)
                    logger.info("created topic", metadata: ["topic": "\(topic.name)", "partitions": "\(topic.partitions)"])
                case .some(.some(let error)) where error.code == .topicAlreadyExists:
                    // Created by someone else meanwhile; the next apply checks it.
                    report.notes.append("\(topic.name) was created concurrently; run apply again to check it")
                case .some(.some(let error)):
                    throw error
                case .none:
                    throw KafkaError(code: .state, message: "the broker returned no result for topic \(topic.name)")
                }
            }
        }
        let configured = existing.filter { !$0.0.configs.isEmpty }
        if !configured.isEmpty {
            do {
                let described = try await admin.describeTopicConfigs(configured.map(\.1))
                for (spec, topic) in configured {
                    let actual = described[topic] ?? [:]
                    for (key, declared) in spec.configs.sorted(by: { $0.key < $1.key }) {
                        guard let entry = actual[key] else {
                            report.notes.append("\(topic): the broker does not report config \(key)")
                            continue
                        }
                        if entry.value != declared {
                            report.drift.append(
                                .init(
                                    topic: topic, field: "config \(key)", declared: declared, actual: entry.value ?? "(unset)",
                                    reason: "not changed: topics apply never alters an existing topic's configs"))
                        }
                    }
                }
            } catch let error as KafkaError {
                report.notes.append("configs of existing topics not checked: the broker did not describe them (\(error.message))")
            }
        }
        let drifted = Set(report.drift.map(\.topic))
        report.unchanged = existing.map(\.1).filter { !drifted.contains($0) }
        return report
    }
}

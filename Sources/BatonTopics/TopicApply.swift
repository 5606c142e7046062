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
        let inspection = try await TopicInspector(admin: admin, namespace: namespace).inspect(specs, scope: .declared)
        report.drift = inspection.drift
        report.notes = inspection.notes
        let missing = specs.filter { inspection.missing.contains($0.topicName(namespace: namespace)) }.map { spec in
            NewTopic(
                name: spec.topicName(namespace: namespace), partitions: spec.partitions,
                replicationFactor: replicationFactor ?? spec.replicationFactor ?? -1, configs: spec.configs)
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
        let drifted = Set(report.drift.map(\.topic))
        report.unchanged = specs.map { $0.topicName(namespace: namespace) }.filter { inspection.partitions[$0] != nil && !drifted.contains($0) }
        return report
    }
}

import BatonKafka

/// A topic that differs from its spec: what differs and why it matters.
public typealias TopicDrift = TopicApplyReport.Drift

/// How closely `TopicInspector` holds existing topics to their specs.
public enum TopicCheckScope: Sendable {
    /// Everything a spec declares: its partition count and every config (`baton check`, `baton topics apply`).
    case declared
    /// What a running engine relies on, whatever partition count the operator chose when applying: topics
    /// keyed alike have one partition count (an instance's events, state, outputs and mailboxes share a
    /// partition number), and each topic has its declared `cleanup.policy` (a state topic that is not
    /// compacted loses instances to retention). Every process checks this at start and while it runs.
    case engine
}

/// What the brokers have of a set of declared topics: which are missing and how the others drifted.
public struct TopicInspection: Sendable, CustomStringConvertible {
    public var missing: [String] = []
    public var drift: [TopicDrift] = []
    /// Things that could not be checked, such as configs on a broker that does not describe them.
    public var notes: [String] = []
    /// The partition count of each declared topic that exists.
    public var partitions: [String: Int] = [:]

    public init() {}

    /// Nothing missing, nothing drifted.
    public var isSound: Bool { missing.isEmpty && drift.isEmpty }
    /// One line per problem, each naming the topic and why.
    public var problems: [String] {
        missing.map { "\($0) is missing (create it with `baton topics apply`)" } + drift.map(\.description)
    }
    public var description: String {
        var lines = partitions.keys.filter { topic in !drift.contains { $0.topic == topic } }.sorted().map { "ok        \($0)" }
        lines += missing.map { "MISSING   \($0)" }
        lines += drift.map { "DRIFT     \($0)" }
        lines += notes.map { "note      \($0)" }
        return lines.joined(separator: "\n")
    }
}

/// Compares the topics on the brokers with their specs. One check for `baton check`, `baton topics apply`
/// and every process's start (`EngineTopicGuard`): it reads, and never changes anything.
public struct TopicInspector: Sendable {
    public var admin: KafkaAdmin
    public var namespace: String

    public init(admin: KafkaAdmin, namespace: String) {
        self.admin = admin
        self.namespace = namespace
    }

    public func inspect(_ specs: [TopicSpec], scope: TopicCheckScope) async throws -> TopicInspection {
        let metadata = try await admin.metadata()
        let counts = metadata.topics.values.filter { $0.error == nil && $0.partitionCount > 0 }.map { ($0.name, $0.partitionCount) }
        var inspection = Self.compare(specs, namespace: namespace, partitions: Dictionary(counts) { $1 }, scope: scope)
        let configured = specs.filter { inspection.partitions[$0.topicName(namespace: namespace)] != nil && !Self.configs($0, scope).isEmpty }
        guard !configured.isEmpty else { return inspection }
        do {
            let described = try await admin.describeTopicConfigs(configured.map { $0.topicName(namespace: namespace) })
            Self.compareConfigs(configured, namespace: namespace, described: described, scope: scope, into: &inspection)
        } catch let error as KafkaError {
            inspection.notes.append("configs of existing topics not checked: the broker did not describe them (\(error.message))")
        }
        return inspection
    }

    /// The configs of a spec that `scope` checks.
    static func configs(_ spec: TopicSpec, _ scope: TopicCheckScope) -> [String: String] {
        switch scope {
        case .declared: spec.configs
        case .engine: spec.configs.filter { $0.key == "cleanup.policy" }
        }
    }

    /// Which topics exist, and how their partition counts compare (pure: `partitions` holds the partition
    /// count of each topic the brokers have).
    public static func compare(_ specs: [TopicSpec], namespace: String, partitions: [String: Int], scope: TopicCheckScope) -> TopicInspection {
        var inspection = TopicInspection()
        for spec in specs {
            let topic = spec.topicName(namespace: namespace)
            guard let count = partitions[topic] else {
                inspection.missing.append(topic)
                continue
            }
            inspection.partitions[topic] = count
            if scope == .declared, count != spec.partitions {
                inspection.drift.append(
                    .init(
                        topic: topic, field: "partitions", declared: "\(spec.partitions)", actual: "\(count)",
                        reason: spec.isKeyed
                            ? "not changed: records are keyed by \(spec.key.rawValue) and a key's partition is fixed when the topic is created; changing the count would move keys away from their history (and from co-partitioned topics). Keep the declared count as it is, or move to a new namespace"
                            : "not changed: topics apply never changes partition counts"))
            }
        }
        guard scope == .engine else { return inspection }
        // Co-partitioning: the events topic (else the first by name) sets the count of the topics keyed alike.
        for key in TopicSpec.Key.allCases where key != .none {
            let group = specs.filter { $0.key == key && inspection.partitions[$0.topicName(namespace: namespace)] != nil }
                .sorted { ($0.name == "events" ? 0 : 1, $0.name) < ($1.name == "events" ? 0 : 1, $1.name) }
            guard let reference = group.first else { continue }
            let referenceTopic = reference.topicName(namespace: namespace)
            let count = inspection.partitions[referenceTopic] ?? 0
            for spec in group.dropFirst() {
                let topic = spec.topicName(namespace: namespace)
                let actual = inspection.partitions[topic] ?? 0
                guard actual != count else { continue }
                inspection.drift.append(
                    .init(
                        topic: topic, field: "partitions", declared: "\(count), as \(referenceTopic)", actual: "\(actual)",
                        reason: "co-partitioned with \(referenceTopic) (both keyed by \(key.rawValue)): a key must land on the same partition number in each, or an instance is rebuilt without its records. Recreate the namespace's topics with one count, or move to a new namespace"))
            }
        }
        return inspection
    }

    /// How the described configs compare with the declared ones (pure).
    public static func compareConfigs(
        _ specs: [TopicSpec], namespace: String, described: [String: [String: TopicConfigEntry]], scope: TopicCheckScope, into inspection: inout TopicInspection
    ) {
        for spec in specs {
            let topic = spec.topicName(namespace: namespace)
            let actual = described[topic] ?? [:]
            for (key, declared) in configs(spec, scope).sorted(by: { $0.key < $1.key }) {
                guard let entry = actual[key] else {
                    inspection.notes.append("\(topic): the broker does not report config \(key)")
                    continue
                }
                if entry.value != declared {
                    inspection.drift.append(
                        .init(
                            topic: topic, field: "config \(key)", declared: declared, actual: entry.value ?? "(unset)",
                            reason: key == "cleanup.policy" && declared.contains("compact")
                                ? "the topic keeps only the latest record of each key when compacted; without compaction, retention deletes records the engine rebuilds from. Not changed by topics apply: alter it (kafka-configs.sh --alter --add-config cleanup.policy=compact) or recreate the topic"
                                : "not changed: topics apply never alters an existing topic's configs"))
                }
            }
        }
    }
}

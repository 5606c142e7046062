import BatonKafka
import BatonTopics
import Testing

/// The comparison every process, `baton check` and `topics apply` share, without a broker.
@Suite("topic check: what the engine needs of its topics")
struct TopicCheckTests {
    let specs: [TopicSpec]
    init() throws { specs = try TopicSpecLoader.builtIn() }

    /// Every declared topic with `count` partitions (keyed ones), as an operator may apply them.
    func present(_ count: Int, except overrides: [String: Int] = [:]) -> [String: Int] {
        Dictionary(uniqueKeysWithValues: specs.map { ("ns.\($0.name)", overrides[$0.name] ?? ($0.isKeyed ? count : $0.partitions)) })
    }

    @Test func theEngineScopeAcceptsAnyCountTheTopicsShareAndTheDeclaredScopeDoesNot() {
        let engine = TopicInspector.compare(specs, namespace: "ns", partitions: present(3), scope: .engine)
        #expect(engine.isSound, "\(engine.problems)")
        let declared = TopicInspector.compare(specs, namespace: "ns", partitions: present(3), scope: .declared)
        #expect(declared.drift.contains { $0.topic == "ns.events" && $0.field == "partitions" && $0.actual == "3" && $0.declared == "12" })
    }

    @Test func topicsKeyedAlikeWithAnotherCountAreDriftNamingTheTopicAndItsReference() {
        let inspection = TopicInspector.compare(specs, namespace: "ns", partitions: present(12, except: ["events": 4]), scope: .engine)
        let drifted = Set(inspection.drift.map(\.topic))
        #expect(drifted == ["ns.state", "ns.outputs", "ns.mailboxes", "ns.alerts", "ns.notifications"])
        let mailboxes = inspection.drift.first { $0.topic == "ns.mailboxes" }
        #expect(mailboxes?.description.hasPrefix("ns.mailboxes: partitions is 12, declared 4, as ns.events: co-partitioned with ns.events") == true)
    }

    @Test func aMissingTopicIsNamedAndTheOthersAreStillChecked() {
        var partitions = present(12, except: ["state": 6])
        partitions["ns.definitions"] = nil
        let inspection = TopicInspector.compare(specs, namespace: "ns", partitions: partitions, scope: .engine)
        #expect(inspection.missing == ["ns.definitions"])
        #expect(inspection.drift.map(\.topic) == ["ns.state"])
        #expect(inspection.problems.contains("ns.definitions is missing (create it with `baton topics apply`)"))
    }

    @Test func theEngineScopeChecksOnlyTheCleanupPolicyAndNamesWhyCompactionMatters() {
        var inspection = TopicInspector.compare(specs, namespace: "ns", partitions: present(12), scope: .engine)
        let configured = specs.filter { ["state", "events"].contains($0.name) }
        let described: [String: [String: TopicConfigEntry]] = [
            "ns.state": ["cleanup.policy": .init(value: "delete"), "retention.ms": .init(value: "1")],
            "ns.events": ["cleanup.policy": .init(value: "delete"), "retention.ms": .init(value: "1")],
        ]
        TopicInspector.compareConfigs(configured, namespace: "ns", described: described, scope: .engine, into: &inspection)
        #expect(inspection.drift.map(\.topic) == ["ns.state"])
        #expect(inspection.drift.first?.description.hasPrefix("ns.state: config cleanup.policy is delete, declared compact") == true)
        #expect(inspection.drift.first?.reason.contains("retention deletes records the engine rebuilds from") == true)

        var declared = TopicInspector.compare(specs, namespace: "ns", partitions: present(12, except: ["definitions": 3]), scope: .declared)
        TopicInspector.compareConfigs(configured, namespace: "ns", described: described, scope: .declared, into: &declared)
        #expect(Set(declared.drift.map(\.field)) == ["config cleanup.policy", "config retention.ms"])
    }
}

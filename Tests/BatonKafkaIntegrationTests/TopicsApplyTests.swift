import BatonKafka
import BatonTestSupport
import BatonTopics
import Foundation
import Testing

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("topics apply against the real broker", .serialized, .timeLimit(.minutes(2)))
struct TopicsApplyTests {
    let specs: [TopicSpec]
    init() throws { specs = try TopicSpecLoader.load(directory: repositoryRoot.appendingPathComponent("topics")) }

    func applier(_ namespace: String) throws -> TopicApplier {
        TopicApplier(admin: try TestKafka.admin(), namespace: namespace, replicationFactor: 1, logger: TestKafka.logger)
    }

    @Test func applyCreatesEverythingOnceAndTheSecondRunIsANoOp() async throws {
        let namespace = TestKafka.uniqueName("ns")
        let first = try await applier(namespace).apply(specs)
        #expect(Set(first.created) == Set(specs.map { $0.topicName(namespace: namespace) }))
        #expect(first.drift.isEmpty)

        let second = try await applier(namespace).apply(specs)
        #expect(second.created.isEmpty)
        #expect(second.drift.isEmpty)
        #expect(Set(second.unchanged) == Set(specs.map { $0.topicName(namespace: namespace) }))

        let metadata = try await TestKafka.admin().metadata()
        for spec in specs {
            #expect(metadata.topics[spec.topicName(namespace: namespace)]?.partitionCount == spec.partitions)
        }
    }

    @Test func partitionCountDriftIsReportedAndNothingIsChanged() async throws {
        let namespace = TestKafka.uniqueName("ns")
        let events = "\(namespace).events"
        try await TestKafka.createTopic(events, partitions: 4)
        try await TestKafka.createTopic("\(namespace).state", partitions: 12, configs: ["cleanup.policy": "delete"])

        let report = try await applier(namespace).apply(specs)
        let partitionDrift = try #require(report.drift.first { $0.topic == events })
        #expect(partitionDrift.field == "partitions")
        #expect(partitionDrift.declared == "12" && partitionDrift.actual == "4")
        #expect(partitionDrift.reason.contains("keyed by instance_id"))
        #expect(!report.created.contains(events))
        #expect(report.created.count == specs.count - 2)
        let configDrift = report.drift.first { $0.topic == "\(namespace).state" }
        #expect(configDrift?.field == "config cleanup.policy")
        #expect(configDrift?.actual == "delete")

        let metadata = try await TestKafka.admin().metadata()
        #expect(metadata.topics[events]?.partitionCount == 4, "apply must never change a partition count")
        // And it stays a report on every later run, not something it tries to fix.
        let again = try await applier(namespace).apply(specs)
        #expect(again.created.isEmpty)
        #expect(again.drift.contains(partitionDrift))
    }
}

@Suite("topic specs")
struct TopicSpecTests {
    @Test func theRepositorysSpecsLoadAndInstanceTopicsAreCoPartitioned() throws {
        let specs = try TopicSpecLoader.load(directory: repositoryRoot.appendingPathComponent("topics"))
        let byName = Dictionary(uniqueKeysWithValues: specs.map { ($0.name, $0) })
        #expect(byName["events"]?.partitions == byName["state"]?.partitions)
        for name in ["state", "definitions", "tasks"] {
            #expect(byName[name]?.configs["cleanup.policy"] == "compact", "\(name) must be compacted")
        }
    }

    func error(_ yaml: String, file: String = "topics/x.yaml") -> TopicSpecError? {
        #expect(throws: TopicSpecError.self) { try TopicSpecLoader.parse(Data(yaml.utf8), file: file) }
    }

    @Test func malformedSpecsNameTheFileAndTheField() throws {
        let wrongType = error("name: events\npartitions: twelve\n")
        #expect(wrongType?.description == "topics/x.yaml: field 'partitions': expected a whole number from 1 to 10000, got 'twelve'")
        #expect(error("name: events\n")?.field == "partitions")
        #expect(error("partitions: 3\n")?.field == "name")
        let unknown = error("name: events\npartitions: 3\npartiton: 4\n")
        #expect(unknown?.field == "partiton")
        #expect(unknown?.reason.contains("did you mean 'partitions'") == true)
        #expect(error("name: events\npartitions: 3\nkey: order\n")?.field == "key")
        #expect(error("name: events\npartitions: 3\nconfigs: [a, b]\n")?.field == "configs")
        #expect(error("name: 'bad name!'\npartitions: 3\n")?.field == "name")
        #expect(error("- just\n- a list\n")?.description.hasPrefix("topics/x.yaml: expected a mapping") == true)
        #expect(error("name: [unclosed\n")?.description.hasPrefix("topics/x.yaml: not valid YAML or JSON") == true)
        #expect(throws: TopicSpecError.self) { try TopicSpecLoader.parse(Data([0xff, 0xfe, 0x00]), file: "topics/bin.yaml") }
    }

    @Test func aFolderReportsEveryBadFileAndCrossFileProblems() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestKafka.uniqueName("specs"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "name: events\npartitions: 12\nkey: instance_id\n".write(to: dir.appendingPathComponent("events.yaml"), atomically: true, encoding: .utf8)
        try "name: state\npartitions: 6\nkey: instance_id\n".write(to: dir.appendingPathComponent("state.yaml"), atomically: true, encoding: .utf8)
        try "name: events\npartitions: 1\n".write(to: dir.appendingPathComponent("again.yaml"), atomically: true, encoding: .utf8)
        try "name: x\npartitions: -1\n".write(to: dir.appendingPathComponent("bad.yaml"), atomically: true, encoding: .utf8)
        let errors = #expect(throws: TopicSpecErrors.self) { try TopicSpecLoader.load(directory: dir) }
        let text = errors?.description ?? ""
        #expect(text.contains("bad.yaml: field 'partitions'"))
        #expect(text.contains("field 'name': topic 'events' is also declared in"))
        #expect(text.contains("state.yaml: field 'partitions': 6 differs from 12"))
    }
}

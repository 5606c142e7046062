import BatonKafka
import BatonRuntime
import Foundation
import Testing

@Suite("Client settings from the environment")
struct EnvironmentSettingsTests {
    @Test func everyProgramReadsTheBrokersTheSettingsFileAndTheFetchWait() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("baton-\(UUID().uuidString).properties")
        try Data("client.rack = eu-1a\n".utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let configuration = try KafkaClientConfiguration.fromEnvironment([
            "BATON_BROKERS": "k1:9092,k2:9092", "BATON_FETCH_WAIT": "250ms", "BATON_KAFKA_CONFIG": file.path,
        ])
        #expect(configuration.brokers.bootstrapServers == "k1:9092,k2:9092")
        #expect(configuration.fetchWait == .milliseconds(250))
        #expect(configuration.additional == ["client.rack": "eu-1a"])

        let defaults = try KafkaClientConfiguration.fromEnvironment([:])
        #expect(defaults.brokers.bootstrapServers == "127.0.0.1:9092")
        #expect(defaults.fetchWait == .milliseconds(5))
        #expect(defaults.additional.isEmpty)
    }

    @Test func anInstanceIdMakesTheEngineGroupMembersStaticAndNoOtherConsumer() throws {
        let client = try KafkaClientConfiguration.fromEnvironment(["BATON_INSTANCE_ID": "coordinator-1"])
        #expect(client.groupInstanceID == "coordinator-1")
        let member = KafkaConsumerConfiguration.engineMember(client: client, group: "g", sessionTimeout: .seconds(10), maxPollInterval: .seconds(30))
        #expect(member.groupInstanceID == "coordinator-1")
        #expect(member.assignmentStrategy == .cooperativeSticky)
        #expect(KafkaConsumerConfiguration(client: client, groupID: nil).groupInstanceID == nil)
        #expect(try KafkaClientConfiguration.fromEnvironment([:]).groupInstanceID == nil)

        let bad = #expect(throws: ClientSettingsError.self) { try KafkaClientConfiguration.fromEnvironment(["BATON_INSTANCE_ID": "pod 1"]) }
        #expect(bad?.description.hasPrefix("BATON_INSTANCE_ID: 'pod 1' is not a group instance id") == true)
        let file = #expect(throws: KafkaPropertiesFile.LoadError.self) { try KafkaPropertiesFile.parse("group.instance.id=a\n", path: "c.properties") }
        #expect(file.map(String.init(describing:))?.contains("use --instance-id or BATON_INSTANCE_ID") == true)
    }

    @Test func aBadSettingIsNamedWithWhereItCameFrom() {
        let wait = #expect(throws: ClientSettingsError.self) { try KafkaClientConfiguration.fromEnvironment(["BATON_FETCH_WAIT": "fast"]) }
        #expect(wait?.description == "BATON_FETCH_WAIT: 'fast' is not a duration from 1ms to 60s, such as 5ms or 500ms")
        let file = #expect(throws: ClientSettingsError.self) { try KafkaClientConfiguration.fromEnvironment(["BATON_KAFKA_CONFIG": "/nonexistent.properties"]) }
        #expect(file?.description == "BATON_KAFKA_CONFIG: /nonexistent.properties: cannot read the file")
    }
}

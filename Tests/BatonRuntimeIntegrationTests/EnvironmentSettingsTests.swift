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

    @Test func aBadSettingIsNamedWithWhereItCameFrom() {
        let wait = #expect(throws: ClientSettingsError.self) { try KafkaClientConfiguration.fromEnvironment(["BATON_FETCH_WAIT": "fast"]) }
        #expect(wait?.description == "BATON_FETCH_WAIT: 'fast' is not a duration from 1ms to 60s, such as 5ms or 500ms")
        let file = #expect(throws: ClientSettingsError.self) { try KafkaClientConfiguration.fromEnvironment(["BATON_KAFKA_CONFIG": "/nonexistent.properties"]) }
        #expect(file?.description == "BATON_KAFKA_CONFIG: /nonexistent.properties: cannot read the file")
    }
}

import BatonKafka
import BatonTestSupport
import Foundation
import Testing

@Suite("Kafka: client settings from a properties file")
struct ClientSettingsTests {
    @Test func propertiesAreReadWithCommentsSpacesAndEqualsSignsInValues() throws {
        let properties = try KafkaPropertiesFile.parse(
            """
            # a managed cluster
            security.protocol = SASL_SSL
            ! also a comment
            sasl.mechanism=PLAIN\r
            sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p=q";

            """, path: "cluster.properties")
        #expect(properties == [
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "PLAIN",
            "sasl.jaas.config": #"org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p=q";"#,
        ])
    }

    @Test func everyBadLineIsNamedAndSettingsBatonReliesOnAreRefused() {
        let error = #expect(throws: KafkaPropertiesFile.LoadError.self) {
            try KafkaPropertiesFile.parse(
                """
                isolation.level=read_uncommitted
                client.rack=eu-1a
                just some words
                client.rack=eu-1b
                =value
                """, path: "cluster.properties")
        }
        let text = error.map(String.init(describing:)) ?? ""
        #expect(text.contains("4 errors"))
        #expect(text.contains("cluster.properties:1: 'isolation.level' cannot be set here: Baton reads only committed records"))
        #expect(text.contains("cluster.properties:3: expected key=value, got 'just some words'"))
        #expect(text.contains("cluster.properties:4: 'client.rack' is set twice"))
        #expect(text.contains("cluster.properties:5: a value without a key"))
        let single = #expect(throws: KafkaPropertiesFile.LoadError.self) {
            try KafkaPropertiesFile.parse("transactional.id=mine\n", path: "p")
        }
        #expect(single?.description == "p:1: 'transactional.id' cannot be set here: Baton names its transactional producers")
        let missing = #expect(throws: KafkaPropertiesFile.LoadError.self) { try KafkaPropertiesFile.load(path: "/nonexistent/cluster.properties") }
        #expect(missing?.description == "/nonexistent/cluster.properties: cannot read the file")
    }

    /// The file's settings reach librdkafka: asking the plaintext test broker for TLS fails, within the
    /// timeout, with an error that names the protocol.
    @Test func settingsFromTheFileReachTheClient() async throws {
        var client = TestKafka.client
        client.requestTimeout = .seconds(2)
        client.additional = try KafkaPropertiesFile.parse("security.protocol=ssl\n", path: "tls.properties")
        let admin = try KafkaAdmin(configuration: client, logger: TestKafka.logger)
        let error = await #expect(throws: KafkaError.self) { try await admin.metadata() }
        #expect(error?.message.contains("security.protocol=ssl") == true)
        // Without it, the same broker answers.
        _ = try await TestKafka.admin().metadata()
    }

    @Test func secretValuesStayOutOfErrors() {
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.client.additional["sasl.no.such.password"] = "hunter2"
        let error = #expect(throws: KafkaError.self) { try KafkaProducer(configuration: configuration, logger: TestKafka.logger) }
        #expect(error?.message == #"Kafka setting sasl.no.such.password=(redacted) is not valid: No such configuration property: "sasl.no.such.password""#)
    }
}

import BatonKafka
import BatonTestSupport
import Foundation
import Testing

/// Baton's clients never create a topic by using it (issue 20): a topic the broker made on a produce or a
/// subscription would get the broker's defaults (partition count, no compaction).
@Suite("Kafka: clients do not create the topics they use", .serialized, .timeLimit(.minutes(2)))
struct NoAutoCreationTests {
    @Test func producingToAMissingTopicFailsAndDoesNotCreateIt() async throws {
        let topic = TestKafka.uniqueName("missing-produce")
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.deliveryTimeout = .seconds(3)
        let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        await #expect(throws: KafkaError.self) {
            try await producer.send(ProducerRecord(topic: topic, key: "k", value: Data("v".utf8)))
        }
        await producer.close()
        #expect(try await TestKafka.admin().metadata().topics[topic] == nil, "a produce created \(topic)")
    }

    @Test func subscribingToAMissingTopicDoesNotCreateIt() async throws {
        let topic = TestKafka.uniqueName("missing-subscribe")
        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: TestKafka.uniqueName("group")), logger: TestKafka.logger)
        try consumer.subscribe([topic])
        let clock = ContinuousClock()
        let until = clock.now + .seconds(4)
        while clock.now < until { _ = try await consumer.poll(timeout: .milliseconds(200)) }
        await consumer.close()
        #expect(try await TestKafka.admin().metadata().topics[topic] == nil, "a subscription created \(topic)")
    }
}

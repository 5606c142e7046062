import BatonKafka
import BatonTestSupport
import Foundation
import Testing

@Suite("Kafka: produce and consume against the real broker", .serialized, .timeLimit(.minutes(2)))
struct ProduceConsumeTests {
    @Test func roundTripKeepsKeysValuesHeadersAndPartitionsPerKey() async throws {
        let topic = TestKafka.uniqueName("roundtrip")
        try await TestKafka.createTopic(topic, partitions: 3)
        let producer = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)

        var sent: [DeliveryReport] = []
        for i in 0..<30 {
            let key = "order-\(i % 5)"
            let report = try await producer.send(
                ProducerRecord(
                    topic: topic, key: key, value: Data("payload-\(i)".utf8),
                    headers: [KafkaHeader(key: "trace", string: "t-\(i)"), KafkaHeader(key: "empty", value: Data()), KafkaHeader(key: "null", value: nil)]))
            sent.append(report)
        }
        // A tombstone and an empty value are different things and must stay so.
        try await producer.send(ProducerRecord(topic: topic, key: "tomb", value: nil))
        try await producer.send(ProducerRecord(topic: topic, key: "empty", value: Data()))
        await producer.close()

        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: nil), logger: TestKafka.logger)
        try consumer.assign((0..<3).map { TopicPartitionOffset(topic, $0, offset: TopicPartitionOffset.beginning) })
        let messages = try await TestKafka.collect(consumer, count: 32)
        await consumer.close()

        #expect(messages.count == 32)
        let payloads = messages.filter { $0.keyString?.hasPrefix("order-") == true }
        #expect(Set(payloads.map { String(decoding: $0.value!, as: UTF8.self) }) == Set((0..<30).map { "payload-\($0)" }))
        for message in payloads {
            let i = Int(String(decoding: message.value!, as: UTF8.self).dropFirst("payload-".count))!
            #expect(message.keyString == "order-\(i % 5)")
            #expect(message.header("trace").map { String(decoding: $0, as: UTF8.self) } == "t-\(i)")
            #expect(message.headers.first { $0.key == "empty" }?.value == Data())
            #expect(message.headers.contains { $0.key == "null" && $0.value == nil })
            #expect(message.timestamp != nil)
            #expect(sent[i].topicPartition == message.topicPartition && sent[i].offset == message.offset)
        }
        // One key, one partition: records of a key keep their order.
        let partitionsPerKey = Dictionary(grouping: payloads, by: { $0.keyString! }).mapValues { Set($0.map(\.partition)) }
        #expect(partitionsPerKey.values.allSatisfy { $0.count == 1 })
        let tomb = try #require(messages.first { $0.keyString == "tomb" })
        #expect(tomb.value == nil)
        let empty = try #require(messages.first { $0.keyString == "empty" })
        #expect(empty.value == Data())
    }

    @Test func enqueueThenFlushDeliversEverything() async throws {
        let topic = TestKafka.uniqueName("enqueue")
        try await TestKafka.createTopic(topic, partitions: 2)
        let producer = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
        for i in 0..<2000 {
            try await producer.enqueue(ProducerRecord(topic: topic, key: "k\(i)", value: Data("\(i)".utf8)))
        }
        try await producer.flush()
        await producer.close()
        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: nil), logger: TestKafka.logger)
        try consumer.assign((0..<2).map { TopicPartitionOffset(topic, $0, offset: TopicPartitionOffset.beginning) })
        let messages = try await TestKafka.collect(consumer, count: 2000)
        await consumer.close()
        #expect(Set(messages.compactMap(\.keyString)).count == 2000)
    }

    @Test func partitionEOFMarksTheEndOfWhatWasWritten() async throws {
        let topic = TestKafka.uniqueName("eof")
        try await TestKafka.createTopic(topic, partitions: 1)
        let producer = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
        for i in 0..<7 { try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("\(i)".utf8))) }
        try await producer.flush()
        await producer.close()
        var configuration = TestKafka.consumerConfiguration(group: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: TestKafka.logger)
        try consumer.assign([TopicPartitionOffset(topic, 0, offset: TopicPartitionOffset.beginning)])
        var read = 0
        var eofOffset: Int64?
        try await waitUntil("partition EOF") {
            for event in try await consumer.poll() {
                switch event {
                case .message: read += 1
                case .partitionEOF(_, let offset): eofOffset = offset
                default: break
                }
            }
            return eofOffset != nil
        }
        await consumer.close()
        #expect(read == 7)
        #expect(eofOffset == 7)
    }

    @Test func seekRereadsAndPauseStopsDelivery() async throws {
        let topic = TestKafka.uniqueName("seek")
        try await TestKafka.createTopic(topic, partitions: 1)
        let producer = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
        for i in 0..<10 { try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("\(i)".utf8))) }
        try await producer.flush()
        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: nil), logger: TestKafka.logger)
        let tp = TopicPartition(topic, 0)
        try consumer.assign([TopicPartitionOffset(tp, offset: TopicPartitionOffset.beginning)])
        #expect(try await TestKafka.collect(consumer, count: 10).map(\.offset) == Array(0..<10))
        try await consumer.seek([TopicPartitionOffset(tp, offset: 4)])
        #expect(try await TestKafka.collect(consumer, count: 6).map(\.offset) == Array(4..<10))

        try consumer.pause([tp])
        try await producer.send(ProducerRecord(topic: topic, key: "k", value: Data("late".utf8)))
        // While paused, polls return nothing even though a record is there; after resume it arrives.
        for _ in 0..<5 {
            let events = try await consumer.poll(timeout: .milliseconds(100))
            #expect(!events.contains { if case .message = $0 { true } else { false } })
        }
        try consumer.resume([tp])
        let late = try await TestKafka.collect(consumer, count: 1)
        #expect(late.map(\.offset) == [10])
        await consumer.close()
        await producer.close()
    }

    @Test func unreachableBrokerFailsWithinTheTimeoutAndSaysWhere() async throws {
        var client = KafkaClientConfiguration(brokers: KafkaBrokers("127.0.0.1:1"))
        client.requestTimeout = .seconds(2)
        let admin = try KafkaAdmin(configuration: client, logger: TestKafka.logger)
        let clock = ContinuousClock()
        let start = clock.now
        let error = await #expect(throws: KafkaError.self) { try await admin.metadata() }
        #expect(clock.now - start < .seconds(6))
        #expect(error?.message.contains("127.0.0.1:1") == true)
        #expect(error?.isRetriable == true)
        let creation = await #expect(throws: KafkaError.self) { try await admin.createTopics([NewTopic(name: "x", partitions: 1)]) }
        #expect(creation?.message.contains("127.0.0.1:1") == true)
    }

    @Test func invalidConfigurationIsNamed() throws {
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.additional["no.such.setting"] = "1"
        let error = #expect(throws: KafkaError.self) { try KafkaProducer(configuration: configuration, logger: TestKafka.logger) }
        #expect(error?.message.contains("no.such.setting") == true)
    }
}

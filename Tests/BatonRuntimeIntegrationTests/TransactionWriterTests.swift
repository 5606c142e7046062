import BatonKafka
import BatonRuntime
import BatonTestSupport
import Foundation
import Testing

/// The one transaction writer of the partition runtime, against the real broker: records and the consumed offset
/// commit together or not at all; a record refused as such is named by its origin.
@Suite("Runtime: the transaction writer against the real broker", .serialized, .timeLimit(.minutes(3)))
struct TransactionWriterTests {
    struct Fixture {
        let input: String
        let output: String
        let consumer: KafkaConsumer
        let writer: TransactionWriter
        let consumed: TopicPartitionOffset
        var tp: TopicPartition { TopicPartition(input, 0) }

        func committed() async throws -> Int64 { try await consumer.committed([tp]).first?.offset ?? -1 }

        func close() async {
            await writer.producer.close(timeout: .seconds(2))
            await consumer.close()
        }
    }

    /// Three records on an input topic, read by a group member; a transactional producer for the output.
    static func fixture() async throws -> Fixture {
        let input = TestKafka.uniqueName("tw-in")
        let output = TestKafka.uniqueName("tw-out")
        try await TestKafka.createTopic(input, partitions: 1)
        try await TestKafka.createTopic(output, partitions: 1)
        let seed = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
        for i in 0..<3 { try await seed.enqueue(ProducerRecord(topic: input, key: "k", value: Data("\(i)".utf8))) }
        try await seed.flush()
        await seed.close()
        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: TestKafka.uniqueName("g")), logger: TestKafka.logger)
        try consumer.subscribe([input])
        let read = try await TestKafka.collect(consumer, count: 3, within: .seconds(45))
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.transactionalID = TestKafka.uniqueName("tw")
        let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        try await producer.initTransactions()
        return Fixture(
            input: input, output: output, consumer: consumer, writer: TransactionWriter(producer: producer, consumer: consumer, logger: TestKafka.logger),
            consumed: try #require(read.last?.nextOffset))
    }

    static func withFixture(_ body: (Fixture) async throws -> Void) async throws {
        let f = try await fixture()
        do { try await body(f) } catch {
            await f.close()
            throw error
        }
        await f.close()
    }

    func record(_ f: Fixture, _ value: String) -> ProducerRecord { ProducerRecord(topic: f.output, key: "k", value: Data(value.utf8)) }

    @Test func recordsAndTheConsumedOffsetCommitTogether() async throws {
        try await Self.withFixture { f in
            let timings = try await f.writer.write([(record(f, "a"), 1), (record(f, "b"), 2)], consumed: f.consumed)
            #expect(timings.total > .zero)
            #expect(try await f.committed() == 3)
            let reader = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: nil), logger: TestKafka.logger)
            try reader.assign([TopicPartitionOffset(f.output, 0, offset: TopicPartitionOffset.beginning)])
            let written = try await TestKafka.collect(reader, count: 2).map { String(decoding: $0.value ?? Data(), as: UTF8.self) }
            await reader.close()
            #expect(written == ["a", "b"])
        }
    }

    struct Frozen: Error {}

    @Test func aFailedLastCheckAbortsAndTheNextTransactionGoesThrough() async throws {
        try await Self.withFixture { f in
            await #expect(throws: Frozen.self) {
                try await f.writer.write([(record(f, "never"), 1)], consumed: f.consumed) { throw Frozen() }
            }
            #expect(try await f.committed() < 0, "an aborted transaction commits no offset")
            // Aborted, not left open: the producer begins the next one.
            _ = try await f.writer.write([(record(f, "next"), 1)], consumed: f.consumed)
            #expect(try await f.committed() == 3)
        }
    }

    @Test func aRecordTooLargeToSendIsNamedByItsOriginAndNothingCommits() async throws {
        try await Self.withFixture { f in
            let huge = ProducerRecord(topic: f.output, key: "k", value: Data(repeating: 0x61, count: 2_000_000))
            do {
                _ = try await f.writer.write([(record(f, "fits"), "small"), (huge, "huge")], consumed: f.consumed)
                Issue.record("a record of 2 MB was written")
            } catch let refused as RecordsRefused<String> {
                #expect(Array(refused.refused.keys) == ["huge"], "\(refused)")
            }
            #expect(try await f.committed() < 0)
            // Without it, the batch goes through.
            _ = try await f.writer.write([(record(f, "fits"), "small")], consumed: f.consumed)
            #expect(try await f.committed() == 3)
        }
    }
}

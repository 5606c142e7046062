import BatonKafka
import BatonTestSupport
import Foundation
import Synchronization
import Testing

/// Polls a group member in the background and keeps its current assignment from the rebalance events.
final class GroupMember: Sendable {
    let consumer: KafkaConsumer
    let assigned = Mutex<Set<TopicPartition>>([])
    let task: Mutex<Task<Void, Never>?> = Mutex(nil)

    init(group: String, topic: String) throws {
        consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: group), logger: TestKafka.logger)
        try consumer.subscribe([topic])
        let t = Task { [self] in
            while !Task.isCancelled, !consumer.isClosed {
                guard let events = try? await consumer.poll() else { return }
                for event in events {
                    switch event {
                    case .assigned(let partitions): assigned.withLock { $0.formUnion(partitions) }
                    case .revoked(let partitions, _): assigned.withLock { $0.subtract(partitions) }
                    default: break
                    }
                }
            }
        }
        task.withLock { $0 = t }
    }

    var partitions: Set<TopicPartition> { assigned.withLock { $0 } }

    func leave() async {
        task.withLock { $0?.cancel() }
        await task.withLock { $0 }?.value
        await consumer.close()
    }
}

@Suite("Kafka: consumer groups and transactions against the real broker", .serialized, .timeLimit(.minutes(3)))
struct GroupAndTransactionTests {
    @Test func twoMembersSplitThePartitionsAndOneTakesAllWhenTheOtherLeaves() async throws {
        let topic = TestKafka.uniqueName("group")
        try await TestKafka.createTopic(topic, partitions: 6)
        let group = TestKafka.uniqueName("g")
        let all = Set((0..<6).map { TopicPartition(topic, Int32($0)) })

        let a = try GroupMember(group: group, topic: topic)
        try await waitUntil("the first member to get every partition", timeout: .seconds(45)) { a.partitions == all }
        let b = try GroupMember(group: group, topic: topic)
        try await waitUntil("both members to share the partitions", timeout: .seconds(45)) {
            let pa = a.partitions, pb = b.partitions
            return !pa.isEmpty && !pb.isEmpty && pa.isDisjoint(with: pb) && pa.union(pb) == all
        }
        await b.leave()
        try await waitUntil("the remaining member to take every partition", timeout: .seconds(45)) { a.partitions == all }
        await a.leave()
    }

    /// Reads a partition from the beginning to its end (partition EOF).
    static func readAll(_ topic: String, _ isolation: KafkaConsumerConfiguration.IsolationLevel) async throws -> [String] {
        var c = TestKafka.consumerConfiguration(group: nil, isolation: isolation)
        c.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: c, logger: TestKafka.logger)
        try consumer.assign([TopicPartitionOffset(topic, 0, offset: TopicPartitionOffset.beginning)])
        var values: [String] = []
        var atEnd = false
        try await waitUntil("the end of \(topic)") {
            for event in try await consumer.poll() {
                if case .message(let m) = event { values.append(String(decoding: m.value!, as: UTF8.self)) }
                if case .partitionEOF = event { atEnd = true }
            }
            return atEnd
        }
        await consumer.close()
        return values
    }

    static func transactionalProducer(linger: Duration = .milliseconds(1)) async throws -> KafkaProducer {
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.transactionalID = TestKafka.uniqueName("tx")
        configuration.linger = linger
        let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        try await producer.initTransactions()
        return producer
    }

    @Test func readCommittedSeesCommittedRecordsAndNeverAbortedOnes() async throws {
        let topic = TestKafka.uniqueName("txn")
        try await TestKafka.createTopic(topic, partitions: 1)
        // A long linger keeps the aborted transaction's records in the client until the abort purges them,
        // so this holds on every broker; the next test covers aborted records that reached the broker.
        let producer = try await Self.transactionalProducer(linger: .seconds(5))

        try producer.beginTransaction()
        for i in 0..<5 { try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("committed-\(i)".utf8))) }
        try await producer.commitTransaction()

        try producer.beginTransaction()
        for i in 0..<3 { try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("aborted-\(i)".utf8))) }
        try await producer.abortTransaction()

        try producer.beginTransaction()
        try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("after".utf8)))
        try await producer.commitTransaction()
        await producer.close()

        #expect(try await Self.readAll(topic, .readCommitted) == (0..<5).map { "committed-\($0)" } + ["after"])
    }

    @Test func abortedRecordsThatReachedTheBrokerAreHiddenFromReadCommitted() async throws {
        let topic = TestKafka.uniqueName("txn-flushed")
        try await TestKafka.createTopic(topic, partitions: 1)
        let producer = try await Self.transactionalProducer()
        try producer.beginTransaction()
        try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("aborted".utf8)))
        try await producer.flush()  // the record is on the broker now
        try await producer.abortTransaction()
        try producer.beginTransaction()
        try await producer.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("committed".utf8)))
        try await producer.commitTransaction()
        await producer.close()

        #expect(try await Self.readAll(topic, .readUncommitted) == ["aborted", "committed"])
        let committed = try await Self.readAll(topic, .readCommitted)
        // Tansu 0.6.0 lists no aborted transactions in its Fetch responses (docs/kafka-compatibility.md),
        // so librdkafka cannot filter them there. Apache Kafka and Redpanda do.
        let tansu = try await TestKafka.brokerIsTansu()
        withKnownIssue("Tansu does not report aborted transactions in Fetch responses") {
            #expect(committed == ["committed"])
        } when: {
            tansu
        }
    }

    @Test func offsetsSentToATransactionAreCommittedOnlyIfItCommits() async throws {
        let input = TestKafka.uniqueName("in")
        let output = TestKafka.uniqueName("out")
        try await TestKafka.createTopic(input, partitions: 1)
        try await TestKafka.createTopic(output, partitions: 1)
        let seed = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
        for i in 0..<5 { try await seed.enqueue(ProducerRecord(topic: input, key: "k", value: Data("\(i)".utf8))) }
        try await seed.flush()
        await seed.close()

        let group = TestKafka.uniqueName("g")
        let consumer = try KafkaConsumer(configuration: TestKafka.consumerConfiguration(group: group), logger: TestKafka.logger)
        try consumer.subscribe([input])
        let messages = try await TestKafka.collect(consumer, count: 5, within: .seconds(45))
        #expect(messages.count == 5)
        let next = try #require(messages.last?.nextOffset)
        let tp = TopicPartition(input, 0)

        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.transactionalID = TestKafka.uniqueName("tx")
        let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        try await producer.initTransactions()

        try producer.beginTransaction()
        try await producer.enqueue(ProducerRecord(topic: output, key: "k", value: Data("x".utf8)))
        try await producer.sendOffsetsToTransaction([next], consumer: consumer)
        try await producer.abortTransaction()
        let afterAbort = try await consumer.committed([tp])
        #expect(afterAbort.first?.offset ?? -1 < 0, "an aborted transaction must not commit its offsets")

        try producer.beginTransaction()
        try await producer.enqueue(ProducerRecord(topic: output, key: "k", value: Data("y".utf8)))
        try await producer.sendOffsetsToTransaction([next], consumer: consumer)
        try await producer.commitTransaction()
        let afterCommit = try await consumer.committed([tp])
        #expect(afterCommit.first?.offset == 5)

        await producer.close()
        await consumer.close()
    }

    @Test func aSecondProducerWithTheSameTransactionalIDFencesTheFirst() async throws {
        let topic = TestKafka.uniqueName("fence")
        try await TestKafka.createTopic(topic, partitions: 1)
        var configuration = KafkaProducerConfiguration(client: TestKafka.client)
        configuration.transactionalID = TestKafka.uniqueName("tx")
        let zombie = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        try await zombie.initTransactions()
        try zombie.beginTransaction()
        try await zombie.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("zombie".utf8)))

        let live = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
        try await live.initTransactions()
        try live.beginTransaction()
        try await live.enqueue(ProducerRecord(topic: topic, key: "k", value: Data("live".utf8)))
        try await live.commitTransaction()

        // The fenced producer can never commit. Kafka answers PRODUCER_FENCED (fatal); Tansu drops the
        // connection on each EndTxn, so librdkafka times out, retrying, and the commit never succeeds.
        await #expect(throws: KafkaError.self) { try await zombie.commitTransaction(timeout: .seconds(5)) }
        await zombie.close(timeout: .seconds(1))
        await live.close()

        let values = try await Self.readAll(topic, .readCommitted)
        #expect(values.contains("live"))
        let tansu = try await TestKafka.brokerIsTansu()
        withKnownIssue("Tansu serves the records of a fenced producer's unfinished transaction") {
            #expect(values == ["live"])
        } when: {
            tansu
        }
    }
}

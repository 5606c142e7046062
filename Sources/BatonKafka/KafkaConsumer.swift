import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization

/// A consumer: in a group (`subscribe`) or on partitions it is given (`assign`).
///
/// `poll` returns events in the exact order they happened: a partition's messages never come before
/// its `.assigned` event, and none of them comes after its `.revoked` event. Offsets are committed only
/// explicitly (`commit`, or `KafkaProducer.sendOffsetsToTransaction`).
public final class KafkaConsumer: Sendable {
    let client: RDKafkaClient
    public let configuration: KafkaConsumerConfiguration
    private let pollQueue: DispatchQueue
    private let closed = Atomic<Bool>(false)

    public init(configuration: KafkaConsumerConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.client = try RDKafkaClient(
            kind: .consumer, properties: configuration.properties, brokers: configuration.client.brokers,
            logger: logger, pollInBackground: false)
        self.pollQueue = DispatchQueue(label: "baton-kafka-consumer")
    }

    deinit {
        if !closed.load(ordering: .acquiring) {
            rd_kafka_consumer_close(client.handle)
        }
    }

    public func subscribe(_ topics: [String]) throws {
        let list = rd_kafka_topic_partition_list_new(Int32(topics.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for topic in topics { rd_kafka_topic_partition_list_add(list, topic, -1) }
        let err = rd_kafka_subscribe(client.handle, list)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "subscribe to \(topics)") }
    }

    /// Reads the given partitions from the given offsets (or `TopicPartitionOffset.beginning`/`.end`), outside any group.
    public func assign(_ offsets: [TopicPartitionOffset]) throws {
        let err = TopicPartitionList.with(offsets) { rd_kafka_assign(client.handle, $0) }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "assign \(offsets)") }
    }

    public func assignment() throws -> [TopicPartition] {
        var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        let err = rd_kafka_assignment(client.handle, &list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { throw KafkaError(err, context: "assignment") }
        defer { rd_kafka_topic_partition_list_destroy(list) }
        return TopicPartitionList.partitions(in: list)
    }

    /// Waits up to `timeout` for something to happen, then returns up to `maxEvents` events without waiting further.
    /// Throws when the consumer hits a fatal error or was closed, and `CancellationError` when the calling task is
    /// cancelled (so that a loop of polls waiting for a broker that does not answer ends when its task is).
    public func poll(maxEvents: Int = 1000, timeout: Duration = .milliseconds(100)) async throws -> [KafkaConsumerEvent] {
        try Task.checkCancellation()
        return try await runBlocking(on: pollQueue) { [self] in
            if isClosed { throw KafkaError(code: .destroyed, message: "the consumer is closed") }
            return try Self.pollBlocking(client, maxEvents: maxEvents, timeoutMs: Int32(timeout.milliseconds))
        }
    }

    private static func pollBlocking(_ client: RDKafkaClient, maxEvents: Int, timeoutMs: Int32) throws -> [KafkaConsumerEvent] {
        var events: [KafkaConsumerEvent] = []
        var wait = timeoutMs
        while events.count < maxEvents {
            let message = rd_kafka_consumer_poll(client.handle, wait)
            wait = 0
            // Callbacks served inside that poll (rebalances, errors) happened before the message it returned.
            let pending = client.context.state.withLock { state -> [KafkaConsumerEvent] in
                defer { state.pendingEvents.removeAll(keepingCapacity: true) }
                return state.pendingEvents
            }
            events.append(contentsOf: pending)
            guard let message else {
                if pending.isEmpty { break } else { continue }
            }
            defer { rd_kafka_message_destroy(message) }
            events.append(try event(from: message, client: client))
        }
        return events
    }

    private static func event(from message: UnsafeMutablePointer<rd_kafka_message_t>, client: RDKafkaClient) throws -> KafkaConsumerEvent {
        let m = message.pointee
        let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        switch m.err {
        case RD_KAFKA_RESP_ERR_NO_ERROR:
            var headers: [KafkaHeader] = []
            var cHeaders: OpaquePointer?
            if rd_kafka_message_headers(message, &cHeaders) == RD_KAFKA_RESP_ERR_NO_ERROR, let cHeaders {
                var index = 0
                var name: UnsafePointer<CChar>?
                var value: UnsafeRawPointer?
                var size = 0
                while rd_kafka_header_get_all(cHeaders, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                    headers.append(KafkaHeader(key: String(cString: name!), value: value.map { Data(bytes: $0, count: size) }))
                    index += 1
                }
            }
            var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
            let timestamp = rd_kafka_message_timestamp(message, &timestampType)
            return .message(
                KafkaMessage(
                    topic: topic, partition: m.partition, offset: m.offset,
                    key: m.key.map { Data(bytes: $0, count: m.key_len) },
                    value: m.payload.map { Data(bytes: $0, count: m.len) },
                    headers: headers,
                    timestamp: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp))
        case RD_KAFKA_RESP_ERR__PARTITION_EOF:
            return .partitionEOF(TopicPartition(topic, m.partition), offset: m.offset)
        default:
            var reason = [CChar](repeating: 0, count: 512)
            let fatal = rd_kafka_fatal_error(client.handle, &reason, reason.count)
            if fatal != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw KafkaError(code: .init(fatal), message: cString(reason), isFatal: true)
            }
            let text = m.payload.map { String(decoding: Data(bytes: $0, count: m.len), as: UTF8.self) }
            return .error(KafkaError(m.err, context: topic.isEmpty ? text : "\(topic)[\(m.partition)]"))
        }
    }

    /// Every event, as an `AsyncSequence` that ends when the consumer is closed.
    public var events: KafkaConsumerEvents { KafkaConsumerEvents(consumer: self) }

    /// Only the messages, as an `AsyncSequence` that ends when the consumer is closed.
    public var messages: KafkaConsumerMessages { KafkaConsumerMessages(consumer: self) }

    /// Commits offsets (the next offset to read for each partition) and waits for the broker's answer, at most
    /// `timeout`: librdkafka's own synchronous commit waits for ever when no broker answers, which would hang a
    /// stopping worker. A commit not answered in time fails with `timedOut` (it may still complete later).
    public func commit(_ offsets: [TopicPartitionOffset], timeout: Duration = .seconds(10)) async throws {
        guard !offsets.isEmpty else { return }
        let client = self.client
        let result = try await runBlocking { () -> Result<Void, KafkaError> in
            guard let queue = rd_kafka_queue_new(client.handle) else { return .failure(KafkaError.client("commit: no queue", code: .state)) }
            // Dropping our reference is safe even while the commit is outstanding: its reply holds one of its own.
            defer { rd_kafka_queue_destroy(queue) }
            let err = TopicPartitionList.with(offsets) { rd_kafka_commit_queue(client.handle, $0, queue, nil, nil) }
            if err != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(err, context: "commit \(offsets)")) }
            guard let event = rd_kafka_queue_poll(queue, Int32(timeout.milliseconds)) else {
                return .failure(KafkaError(code: .timedOut, message: "commit \(offsets): no answer within \(timeout)", isRetriable: true))
            }
            defer { rd_kafka_event_destroy(event) }
            let eventError = rd_kafka_event_error(event)
            if eventError != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(eventError, context: "commit \(offsets)")) }
            if let list = rd_kafka_event_topic_partition_list(event), let error = TopicPartitionList.firstError(in: list) { return .failure(error) }
            return .success(())
        }
        try result.get()
    }

    /// Commits the offset after `message`.
    public func commit(_ message: KafkaMessage) async throws {
        try await commit([message.nextOffset])
    }

    /// The group's committed offsets for these partitions (`TopicPartitionOffset.stored`, -1001, where none).
    public func committed(_ partitions: [TopicPartition], timeout: Duration = .seconds(10)) async throws -> [TopicPartitionOffset] {
        let client = self.client  // kept alive by the call, which may outlive a cancelled wait
        return try await runBlocking {
            try TopicPartitionList.with(partitions) { list in
                let err = rd_kafka_committed(client.handle, list, Int32(timeout.milliseconds))
                if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "committed offsets") }
                return TopicPartitionList.offsets(in: list)
            }
        }
    }

    /// The offset each partition will be fetched from next (past transaction markers, which a consumer never
    /// gets: the end of a partition whose last record was a marker is its high watermark). Nil for a partition
    /// nothing was fetched from yet. Answers from the client's memory, without asking the broker.
    public func positions(_ partitions: [TopicPartition]) throws -> [TopicPartition: Int64] {
        try TopicPartitionList.with(partitions) { list in
            let err = rd_kafka_position(client.handle, list)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "positions") }
            return Dictionary(TopicPartitionList.offsets(in: list).filter { $0.offset >= 0 }.map { ($0.topicPartition, $0.offset) }) { a, _ in a }
        }
    }

    /// Moves the read position of assigned partitions.
    public func seek(_ offsets: [TopicPartitionOffset], timeout: Duration = .seconds(10)) async throws {
        let client = self.client  // kept alive by the call, which may outlive a cancelled wait
        try await runBlocking {
            try TopicPartitionList.with(offsets) { list in
                if let error = rd_kafka_seek_partitions(client.handle, list, Int32(timeout.milliseconds)) {
                    throw KafkaError(consuming: error, context: "seek \(offsets)")
                }
                if let error = TopicPartitionList.firstError(in: list) { throw error }
            }
        }
    }

    /// Stops fetching from these partitions (they stay assigned) until `resume`.
    public func pause(_ partitions: [TopicPartition]) throws {
        let err = TopicPartitionList.with(partitions) { rd_kafka_pause_partitions(client.handle, $0) }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "pause \(partitions)") }
    }

    public func resume(_ partitions: [TopicPartition]) throws {
        let err = TopicPartitionList.with(partitions) { rd_kafka_resume_partitions(client.handle, $0) }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "resume \(partitions)") }
    }

    /// Each partition's first offset and its end (the high watermark), as its leader answers a ListOffsets
    /// request now. On Tansu the end can lag behind a batch just produced (docs/kafka-compatibility.md, gap 3):
    /// good for an estimate such as a lag, not for reading to the end.
    public func watermarks(_ partitions: [TopicPartition], timeout: Duration = .seconds(5)) async throws -> [TopicPartition: (low: Int64, high: Int64)] {
        let client = self.client  // kept alive by the call, which may outlive a cancelled wait
        return try await runBlocking {
            var result: [TopicPartition: (low: Int64, high: Int64)] = [:]
            for tp in partitions {
                var low: Int64 = 0
                var high: Int64 = 0
                let err = rd_kafka_query_watermark_offsets(client.handle, tp.topic, tp.partition, &low, &high, Int32(timeout.milliseconds))
                if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "watermarks of \(tp)") }
                result[tp] = (low, high)
            }
            return result
        }
    }

    /// The high watermark last seen in a fetch response (see docs: more reliable than a ListOffsets query on some brokers).
    public func cachedHighWatermark(_ partition: TopicPartition) -> Int64? {
        var low: Int64 = 0
        var high: Int64 = 0
        let err = rd_kafka_get_watermark_offsets(client.handle, partition.topic, partition.partition, &low, &high)
        return err == RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 ? high : nil
    }

    /// Leaves the group (its partitions move to the other members at once) and stops. Idempotent. Waits at
    /// most `timeout`: with no broker to answer, leaving could take a session timeout, and a stopping process
    /// must not hang on it (the group then notices the member is gone when its session expires).
    public func close(timeout: Duration = .seconds(5)) async {
        guard closed.exchange(true, ordering: .acquiringAndReleasing) == false else { return }
        let client = self.client  // kept alive by the closure until the close has returned
        let finished = await runBlocking(on: pollQueue, atMost: timeout) { _ = rd_kafka_consumer_close(client.handle) }
        if !finished { client.logger.warning("the consumer did not leave its group within \(timeout); going on without waiting") }
    }

    public var isClosed: Bool { closed.load(ordering: .acquiring) }

    /// Cluster metadata seen through this consumer's connections.
    public func metadata(timeout: Duration = .seconds(10)) async throws -> ClusterMetadata {
        let client = self.client
        return try await runBlocking { try client.metadata(timeout: timeout) }
    }
}

public struct KafkaConsumerEvents: AsyncSequence, Sendable {
    public typealias Element = KafkaConsumerEvent
    let consumer: KafkaConsumer

    public struct AsyncIterator: AsyncIteratorProtocol {
        let consumer: KafkaConsumer
        var buffer: [KafkaConsumerEvent] = []
        var index = 0

        public mutating func next() async throws -> KafkaConsumerEvent? {
            while index >= buffer.count {
                if Task.isCancelled || consumer.isClosed { return nil }
                do {
                    buffer = try await consumer.poll()
                } catch let error as KafkaError where error.code == .destroyed {
                    return nil
                }
                index = 0
            }
            defer { index += 1 }
            return buffer[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(consumer: consumer) }
}

public struct KafkaConsumerMessages: AsyncSequence, Sendable {
    public typealias Element = KafkaMessage
    let consumer: KafkaConsumer

    public struct AsyncIterator: AsyncIteratorProtocol {
        var events: KafkaConsumerEvents.AsyncIterator

        public mutating func next() async throws -> KafkaMessage? {
            while let event = try await events.next() {
                if case .message(let message) = event { return message }
            }
            return nil
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(events: consumer.events.makeAsyncIterator()) }
}

import CRdKafka
import Foundation
import Logging
import Synchronization

/// An idempotent producer (acks=all), optionally transactional.
///
/// `send` waits for the broker's acknowledgement; `enqueue` only hands the record to librdkafka, which
/// batches it, and `flush` (or committing a transaction) waits for everything enqueued. Delivery reports
/// are served by a background thread, never by a cooperative one.
public final class KafkaProducer: Sendable {
    let client: RDKafkaClient
    public let configuration: KafkaProducerConfiguration

    public init(configuration: KafkaProducerConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.client = try RDKafkaClient(
            kind: .producer, properties: configuration.properties, brokers: configuration.client.brokers,
            logger: logger, pollInBackground: true)
    }

    /// Produces one record and waits until the broker has it (or delivery failed). Cancelling the waiting task
    /// stops the waiting (`CancellationError`) but not the delivery: the record may still arrive.
    @discardableResult
    public func send(_ record: ProducerRecord) async throws -> DeliveryReport {
        let promise = DeliveryPromise()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                promise.set(continuation)
                let opaque = Unmanaged.passRetained(promise).toOpaque()
                do {
                    try produce(record, opaque: opaque)
                } catch {
                    Unmanaged<DeliveryPromise>.fromOpaque(opaque).release()
                    promise.fail(error)
                }
            }
        } onCancel: {
            promise.fail(CancellationError())
        }
    }

    /// Hands a record to librdkafka without waiting for delivery. When its local queue is full this
    /// waits for room rather than failing. Delivery failures surface from `flush` or `commitTransaction`; a
    /// record given a `tag` that is refused is also listed by `takeRejected()`, so that a transaction that
    /// failed can tell which of its records the broker would not take.
    public func enqueue(_ record: ProducerRecord, tag: Int? = nil) async throws {
        var backoff = Duration.microseconds(200)
        while true {
            let opaque = tag.map { Unmanaged.passRetained(DeliveryTag($0)).toOpaque() }
            do {
                return try produce(record, opaque: opaque)
            } catch let error as KafkaError {
                if let opaque { Unmanaged<DeliveryTag>.fromOpaque(opaque).release() }
                guard error.code == .queueFull else { throw error }
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .milliseconds(50))
            }
        }
    }

    /// The tagged records refused since the last call, with why.
    public func takeRejected() -> [(tag: Int, error: KafkaError)] {
        client.context.state.withLock { state in
            defer { state.rejected.removeAll() }
            return state.rejected
        }
    }

    /// The fatal error this producer hit, if any: then it can no longer be used and must be replaced.
    public var fatalError: KafkaError? {
        var reason = [CChar](repeating: 0, count: 512)
        let err = rd_kafka_fatal_error(client.handle, &reason, reason.count)
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        return KafkaError(code: .init(err), message: cString(reason), isFatal: true)
    }

    private func produce(_ record: ProducerRecord, opaque: UnsafeMutableRawPointer?) throws {
        var headers: OpaquePointer?
        if !record.headers.isEmpty {
            headers = rd_kafka_headers_new(record.headers.count)
            for header in record.headers {
                withBytes(header.value) { pointer, count in
                    _ = rd_kafka_header_add(headers, header.key, -1, pointer, count)
                }
            }
        }
        let err = withBytes(record.key) { key, keyCount in
            withBytes(record.value) { value, valueCount in
                baton_rd_kafka_produce(
                    client.handle, record.topic, record.partition ?? -1, key, keyCount, value, valueCount,
                    headers, record.timestamp ?? 0, opaque)
            }
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            if let headers { rd_kafka_headers_destroy(headers) }
            throw KafkaError(err, context: "produce to \(record.topic)")
        }
    }

    /// Waits until every enqueued record is delivered, then throws the first delivery failure since the last flush.
    public func flush(timeout: Duration = .seconds(30)) async throws {
        let client = self.client  // kept alive by the call, which may outlive a cancelled wait
        let err = try await runBlocking { rd_kafka_flush(client.handle, Int32(timeout.milliseconds)) }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "flush") }
        let failure = client.context.state.withLock { state -> (Int, KafkaError?) in
            defer { state.deliveryFailures = 0; state.firstDeliveryFailure = nil }
            return (state.deliveryFailures, state.firstDeliveryFailure)
        }
        if failure.0 > 0, let first = failure.1 {
            throw KafkaError(
                code: first.code, message: "\(failure.0) record(s) were not delivered; the first: \(first.message)",
                isRetriable: first.isRetriable, isFatal: first.isFatal)
        }
    }

    // MARK: Transactions

    /// Registers the transactional id with the broker, fencing any older producer that used it, and
    /// completes or aborts whatever transaction that producer left open.
    public func initTransactions(timeout: Duration = .seconds(30)) async throws {
        try await transactional("init transactions") { rd_kafka_init_transactions($0, Int32(timeout.milliseconds)) }
    }

    public func beginTransaction() throws {
        if let error = rd_kafka_begin_transaction(client.handle) { throw KafkaError(consuming: error, context: "begin transaction") }
        // Refusals of an earlier transaction's records are no longer news.
        _ = takeRejected()
    }

    /// Adds consumed offsets to the current transaction: they are committed for the consumer's group if,
    /// and only if, the transaction commits.
    public func sendOffsetsToTransaction(
        _ offsets: [TopicPartitionOffset], consumer: KafkaConsumer, timeout: Duration = .seconds(30)
    ) async throws {
        guard !offsets.isEmpty else { return }
        guard configuration.transactionalID != nil else {
            throw KafkaError.client("send offsets to transaction: the producer has no transactional id", code: .state)
        }
        guard let metadata = rd_kafka_consumer_group_metadata(consumer.client.handle) else {
            throw KafkaError.client("the consumer has no group metadata (is it in a consumer group?)", code: .state)
        }
        // Destroyed by the call when it is done with it, which may be after a cancelled wait.
        let groupMetadata = UncheckedHandle(metadata)
        try await transactional("send offsets to transaction") { handle in
            defer { rd_kafka_consumer_group_metadata_destroy(groupMetadata.pointer) }
            return TopicPartitionList.with(offsets) { list in
                rd_kafka_send_offsets_to_transaction(handle, list, groupMetadata.pointer, Int32(timeout.milliseconds))
            }
        }
    }

    /// Flushes and commits the current transaction. On an error with `transactionRequiresAbort`, call
    /// `abortTransaction`; on a fatal one (fenced), recreate the producer.
    public func commitTransaction(timeout: Duration = .seconds(30)) async throws {
        try await transactional("commit transaction") { rd_kafka_commit_transaction($0, Int32(timeout.milliseconds)) }
    }

    public func abortTransaction(timeout: Duration = .seconds(30)) async throws {
        try await transactional("abort transaction") { rd_kafka_abort_transaction($0, Int32(timeout.milliseconds)) }
    }

    private func transactional(_ what: String, _ call: @escaping @Sendable (OpaquePointer) -> OpaquePointer?) async throws {
        guard configuration.transactionalID != nil else {
            throw KafkaError.client("\(what): the producer has no transactional id", code: .state)
        }
        let client = self.client  // kept alive by the call, which may outlive a cancelled wait
        let error = try await runBlocking { call(client.handle).map(UncheckedHandle.init) }
        if let error { throw KafkaError(consuming: error.pointer, context: what) }
    }

    /// Flushes what is outstanding (waiting at most `timeout`) and stops the delivery thread. What is not
    /// delivered by then is purged, with a warning naming how many records: every `send` still waiting fails
    /// then (so that its caller can send again elsewhere), none is left waiting for ever.
    public func close(timeout: Duration = .seconds(10)) async {
        let client = self.client
        let left = await runBlockingIgnoringErrors {
            let err = rd_kafka_flush(client.handle, Int32(timeout.milliseconds))
            let left = err == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : Int(rd_kafka_outq_len(client.handle))
            if left > 0 {
                // Fail what is queued or in flight, then serve those delivery reports before the poller stops.
                _ = rd_kafka_purge(client.handle, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT | RD_KAFKA_PURGE_F_NON_BLOCKING)
                _ = rd_kafka_flush(client.handle, 1000)
            }
            client.stopPolling()
            return left
        }
        if left > 0 { client.logger.warning("producer closed with \(left) record(s) undelivered after \(timeout); they were failed") }
    }

    /// Cluster metadata seen through this producer's connections.
    public func metadata(timeout: Duration = .seconds(10)) async throws -> ClusterMetadata {
        let client = self.client
        return try await runBlocking { try client.metadata(timeout: timeout) }
    }
}

private let emptyByte: UInt8 = 0

/// Calls `body` with a pointer to the bytes (nil for nil data, a valid pointer with count 0 for empty data,
/// so that an empty value stays distinct from a tombstone).
func withBytes<T>(_ data: Data?, _ body: (UnsafeRawPointer?, Int) -> T) -> T {
    guard let data else { return body(nil, 0) }
    if data.isEmpty { return withUnsafePointer(to: emptyByte) { body(UnsafeRawPointer($0), 0) } }
    return data.withUnsafeBytes { body($0.baseAddress, $0.count) }
}

/// A string from a NUL-terminated C buffer that librdkafka filled in.
func cString(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

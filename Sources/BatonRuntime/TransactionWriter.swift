import BatonCore
import BatonKafka
import BatonWire
import Foundation
import Logging

/// Records of a transaction that the broker (or librdkafka, before sending) refused as such: too large,
/// malformed. Named by where each came from, so that what made them can go on without them.
public struct RecordsRefused<Origin: Hashable & Sendable>: Error, CustomStringConvertible {
    public var refused: [Origin: String]

    public init(refused: [Origin: String]) { self.refused = refused }

    public var description: String { refused.map { "\($0.key): \($0.value)" }.sorted().joined(separator: "; ") }
}

/// How long each part of a committed transaction took.
public struct TransactionTimings: Sendable {
    public var produce: Duration
    public var offsets: Duration
    public var commit: Duration
    public var total: Duration { produce + offsets + commit }
}

/// Read-process-write: one transaction with the records that applying a batch produced and the batch's
/// consumed offset, committed or aborted as a whole.
public struct TransactionWriter: Sendable {
    public let producer: KafkaProducer
    /// The group member whose metadata goes into the transaction.
    public let consumer: KafkaConsumer
    let logger: Logger

    public init(producer: KafkaProducer, consumer: KafkaConsumer, logger: Logger) {
        self.producer = producer
        self.consumer = consumer
        self.logger = logger
    }

    /// Begins a transaction, sends `records` and `consumed` (the offset after the batch's last record), runs
    /// `beforeCommit` (a last check that may throw, such as a write gate), and commits. On any failure the
    /// transaction is aborted and the error thrown again; when the broker refused records as such, the error is
    /// `RecordsRefused` naming their origins.
    public func write<Origin: Hashable & Sendable>(
        _ records: [(record: ProducerRecord, origin: Origin)], consumed: TopicPartitionOffset?, beforeCommit: () throws -> Void = {}
    ) async throws -> TransactionTimings {
        let began = ContinuousClock.now
        var refusedAtOnce: [Origin: String] = [:]
        do {
            try producer.beginTransaction()
            for (i, r) in records.enumerated() {
                do { try await producer.enqueue(r.record, tag: i) } catch let error as KafkaError where error.isRecordRefusal {
                    // librdkafka refused it before sending (larger than its message.max.bytes): the same as the broker's refusal.
                    refusedAtOnce[r.origin] = "refused: \(error.message)"
                }
            }
            if !refusedAtOnce.isEmpty { throw RecordsRefused(refused: refusedAtOnce) }
            let produced = ContinuousClock.now
            if let consumed { try await producer.sendOffsetsToTransaction([consumed], consumer: consumer) }
            let offsetsSent = ContinuousClock.now
            try beforeCommit()
            try await producer.commitTransaction()
            return TransactionTimings(produce: produced - began, offsets: offsetsSent - produced, commit: .now - offsetsSent)
        } catch {
            do { try await producer.abortTransaction() } catch let abortError {
                logger.debug("abort after a failed transaction failed too", metadata: ["producer": "\(producer)", "error": "\(abortError)"])
            }
            let rejected = producer.takeRejected().filter { records.indices.contains($0.tag) && $0.error.isRecordRefusal }
            if !rejected.isEmpty {
                let byBroker = Dictionary(rejected.map { (records[$0.tag].origin, "refused by the broker: \($0.error.message)") }) { a, _ in a }
                throw RecordsRefused(refused: byBroker.merging(refusedAtOnce) { a, _ in a })
            }
            throw error
        }
    }
}

/// Alerts about the engine itself (a partition that cannot commit) on the alerts topic, outside transactions.
public struct EngineAlerts: Sendable {
    let producer: ResilientProducer
    let topic: String
    let logger: Logger
    /// Counts an alert by severity (`baton_alerts_total` or the service's own).
    let count: @Sendable (String) -> Void
    let clock: @Sendable () -> Int64

    public init(producer: ResilientProducer, topic: String, logger: Logger, clock: @escaping @Sendable () -> Int64, count: @escaping @Sendable (String) -> Void) {
        self.producer = producer
        self.topic = topic
        self.logger = logger
        self.clock = clock
        self.count = count
    }

    /// Logs and sends the alert, keyed `key`; logged when even that fails. Whether it was delivered.
    @discardableResult
    public func send(key: String, partition: Int32?, severity: AlertSeverity, _ message: String) async -> Bool {
        logger.log(level: severity == .warning ? .warning : .error, "alert: \(message)", metadata: ["key": "\(key)"])
        count(severity.rawValue)
        let record = AlertRecord(
            alert: AlertMessage(severity: severity == .warning ? .warning : .critical, instanceID: nil, workflowID: nil, step: nil, message: message, partition: partition),
            at: clock())
        do {
            try await producer.send(ProducerRecord(topic: topic, key: Data(key.utf8), value: Wire.encode(record), headers: Wire.headers(.alert)))
            return true
        } catch {
            logger.error("could not send the alert either (it is tried again): \(error)", metadata: ["key": "\(key)"])
            return false
        }
    }
}

import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization

/// State the C callbacks reach through librdkafka's opaque pointer. Callbacks run only inside our own
/// poll calls (logs go through `log.queue`, rebalances and delivery reports through the queues we poll),
/// so none of them runs on a librdkafka thread, and none of them blocks: each takes a lock briefly.
final class CallbackContext: Sendable {
    let logger: Logger
    struct State {
        var lastError: KafkaError?
        var pendingEvents: [KafkaConsumerEvent] = []
        var deliveryFailures = 0
        var firstDeliveryFailure: KafkaError?
        /// Records enqueued with a tag that the broker (or librdkafka) refused, since they were last taken.
        var rejected: [(tag: Int, error: KafkaError)] = []
    }
    let state = Mutex(State())
    /// Only a consumer hands events to its caller (through `poll`); other clients only log them.
    let collectsEvents: Bool

    init(logger: Logger, collectsEvents: Bool) {
        self.logger = logger
        self.collectsEvents = collectsEvents
    }

    static func from(_ opaque: UnsafeMutableRawPointer?) -> CallbackContext? {
        opaque.map { Unmanaged<CallbackContext>.fromOpaque($0).takeUnretainedValue() }
    }
}

/// One `rd_kafka_t` handle. Every C call on it lives in this module; librdkafka documents its public API
/// as thread-safe, which is why the pointer may be shared between tasks (`@unchecked Sendable`).
final class RDKafkaClient: @unchecked Sendable {
    enum Kind { case producer, consumer }

    let handle: OpaquePointer
    let kind: Kind
    let context: CallbackContext
    let logger: Logger
    let brokers: KafkaBrokers
    /// The `security.protocol` the client was given, when not plaintext: named when no broker answers.
    let securityProtocol: String?
    private let poller: Poller?

    init(kind: Kind, properties: [String: String], brokers: KafkaBrokers, logger: Logger, pollInBackground: Bool) throws {
        try LibrdkafkaVersion.check()
        self.kind = kind
        self.logger = logger
        self.brokers = brokers
        self.securityProtocol = properties["security.protocol"].flatMap { $0.lowercased() == "plaintext" ? nil : $0 }
        let context = CallbackContext(logger: logger, collectsEvents: kind == .consumer)
        self.context = context

        let conf = rd_kafka_conf_new()
        var errstr = [CChar](repeating: 0, count: 512)
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
            if rd_kafka_conf_set(conf, key, value, &errstr, errstr.count) != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let secret = Self.isSecret(key) && !value.isEmpty
                let reason = secret ? cString(errstr).replacingOccurrences(of: value, with: "(redacted)") : cString(errstr)
                throw KafkaError(
                    code: .invalidConfiguration,
                    message: "Kafka setting \(key)=\(secret ? "(redacted)" : value) is not valid: \(reason)")
            }
        }
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_log_cb(conf, logCallback)
        rd_kafka_conf_set_error_cb(conf, errorCallback)
        switch kind {
        case .producer: rd_kafka_conf_set_dr_msg_cb(conf, deliveryCallback)
        case .consumer:
            rd_kafka_conf_set_rebalance_cb(conf, rebalanceCallback)
        }
        guard let handle = rd_kafka_new(kind == .producer ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(code: .invalidConfiguration, message: "could not create a Kafka client: \(cString(errstr))")
        }
        self.handle = handle
        // Logs to the main queue (which a consumer forwards to its consumer queue): served by our polls.
        rd_kafka_set_log_queue(handle, nil)
        if kind == .consumer { rd_kafka_poll_set_consumer(handle) }
        self.poller = pollInBackground ? Poller(handle: handle, name: "baton-kafka-poll") : nil
    }

    deinit {
        poller?.stop()
        // Blocking, but a client is only released after `close`, which did the slow part off the cooperative pool.
        rd_kafka_destroy(handle)
    }

    /// Stops the background poll thread (after a producer's final flush).
    func stopPolling() { poller?.stop() }

    /// The last connection-level error librdkafka reported, for a clearer message when an operation times out.
    var lastError: KafkaError? { context.state.withLock { $0.lastError } }

    /// Cluster metadata: every topic with its partition count, or an error naming the brokers when none answers.
    func metadata(timeout: Duration) throws -> ClusterMetadata {
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(handle, 1, nil, &metadata, Int32(timeout.milliseconds))
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            throw unreachable(err, timeout: timeout)
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        var topics: [String: TopicMetadata] = [:]
        for i in 0..<Int(metadata.pointee.topic_cnt) {
            let t = metadata.pointee.topics[i]
            let name = String(cString: t.topic)
            topics[name] = TopicMetadata(
                name: name, partitionCount: Int(t.partition_cnt),
                error: t.err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(t.err, context: "topic \(name)"))
        }
        var clusterID: String?
        if let id = rd_kafka_clusterid(handle, Int32(timeout.milliseconds)) {
            clusterID = String(cString: id)
            rd_kafka_mem_free(handle, id)
        }
        return ClusterMetadata(brokerCount: Int(metadata.pointee.broker_cnt), clusterID: clusterID, topics: topics)
    }

    /// Settings whose values must not appear in errors or logs.
    static func isSecret(_ key: String) -> Bool {
        ["password", "secret", "jaas", "pem", "token"].contains { key.lowercased().contains($0) }
    }

    func unreachable(_ err: rd_kafka_resp_err_t, timeout: Duration) -> KafkaError {
        let code = KafkaError.Code(err)
        guard code == .timedOut || code == .transport || code == .allBrokersDown else {
            return KafkaError(err, context: "metadata request to \(brokers)")
        }
        let detail = lastError.map { " (last error: \($0.message))" } ?? ""
        return KafkaError(
            code: code,
            message: "no Kafka broker at \(brokers) answered within \(timeout)\(detail); is it running\(securityProtocol.map { ", and does it speak security.protocol=\($0)" } ?? "")? Set BATON_BROKERS to point elsewhere",
            isRetriable: true)
    }
}

public struct ClusterMetadata: Sendable {
    public var brokerCount: Int
    public var clusterID: String?
    public var topics: [String: TopicMetadata]
}

public struct TopicMetadata: Sendable {
    public var name: String
    public var partitionCount: Int
    public var error: KafkaError?
}

/// A thread that serves a handle's main queue (delivery reports, logs, errors) until stopped.
final class Poller: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(handle: OpaquePointer, name: String) {
        let handle = UncheckedHandle(handle)
        let thread = Thread { [self] in
            while !stopped.load(ordering: .acquiring) {
                rd_kafka_poll(handle.pointer, 100)
            }
            finished.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Idempotent; waits for the thread's last poll to return.
    func stop() {
        if stopped.exchange(true, ordering: .acquiringAndReleasing) == false {
            finished.wait()
        }
    }
}

/// A librdkafka handle crossing into a closure. Safe because the handle outlives every such closure
/// (the owner stops them before destroying it) and librdkafka's API is thread-safe.
struct UncheckedHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// Runs a blocking librdkafka call on a Dispatch thread, never on Swift's cooperative pool.
///
/// Cancelling the waiting task stops the waiting at once (it throws `CancellationError`), so that a process
/// being stopped is not held by a call that waits for a broker that does not answer (a transaction's commit,
/// `init_transactions`, a flush: each up to its timeout). The call itself runs to its end on its thread (it
/// cannot be interrupted) and its result is dropped: `body` must keep what it uses alive (capture the
/// `RDKafkaClient`, not only its handle), so that the handle is not destroyed under it.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await runBlocking(on: .global(), body)
}

func runBlocking<T: Sendable>(on queue: DispatchQueue, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    let once = OnceContinuation<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { continuation in
            once.set(continuation)
            queue.async { once.resume(with: Result { try body() }) }
        }
    } onCancel: {
        once.resume(with: .failure(CancellationError()))
    }
}

/// A continuation resumed by whichever comes first (the call's result, a cancellation, a deadline); later
/// resumptions are dropped. A resumption that comes before the continuation is set is kept for it.
final class OnceContinuation<T: Sendable>: Sendable {
    private enum State {
        case waiting(CheckedContinuation<T, any Error>?)
        case early(Result<T, any Error>)
        case done
    }
    private let state = Mutex(State.waiting(nil))

    func set(_ continuation: CheckedContinuation<T, any Error>) {
        let early = state.withLock { s -> Result<T, any Error>? in
            switch s {
            case .waiting:
                s = .waiting(continuation)
                return nil
            case .early(let result):
                s = .done
                return result
            case .done:
                return nil
            }
        }
        if let early { continuation.resume(with: early) }
    }

    func resume(with result: Result<T, any Error>) {
        let continuation = state.withLock { s -> CheckedContinuation<T, any Error>? in
            switch s {
            case .waiting(let c?):
                s = .done
                return c
            case .waiting(nil):
                s = .early(result)
                return nil
            case .early, .done:
                return nil
            }
        }
        continuation?.resume(with: result)
    }
}

/// A blocking call that cannot fail, on a Dispatch thread.
func runBlockingIgnoringErrors<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: body()) }
    }
}

/// Runs a blocking call on `queue` and waits for it at most `timeout`: true when it returned in time. The call
/// itself runs to its end either way (a Dispatch thread cannot be interrupted); only the waiting stops.
func runBlocking(on queue: DispatchQueue, atMost timeout: Duration, _ body: @escaping @Sendable () -> Void) async -> Bool {
    let once = OnceContinuation<Bool>()
    do {
        return try await withCheckedThrowingContinuation { continuation in
            once.set(continuation)
            queue.async {
                body()
                once.resume(with: .success(true))
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(timeout.milliseconds)) { once.resume(with: .success(false)) }
        }
    } catch {
        return false  // never thrown: only `.success` is given to `once`
    }
}

// MARK: - C callbacks

private let logCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Void = {
    handle, level, facility, message in
    guard let handle, let context = CallbackContext.from(rd_kafka_opaque(handle)) else { return }
    let logLevel: Logger.Level =
        switch level {
        case 0...2: .critical
        // librdkafka logs transient connection failures at LOG_ERR; they also reach callers as errors.
        case 3, 4: .warning
        case 5: .notice
        case 6: .info
        default: .debug
        }
    let text = message.map { String(cString: $0) } ?? ""
    context.logger.log(
        level: logLevel, "\(text)",
        metadata: ["kafka.facility": .string(facility.map { String(cString: $0) } ?? "")])
}

private let errorCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void = {
    _, err, reason, opaque in
    guard let context = CallbackContext.from(opaque) else { return }
    let error = KafkaError(rd_kafka_resp_err_t(err), context: reason.map { String(cString: $0) })
    context.state.withLock {
        $0.lastError = error
        guard context.collectsEvents else { return }
        $0.pendingEvents.append(.error(error))
        if $0.pendingEvents.count > 10_000 { $0.pendingEvents.removeFirst($0.pendingEvents.count - 10_000) }
    }
    context.logger.debug("kafka client error: \(error)")
}

private let deliveryCallback:
    @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = {
        _, message, opaque in
        guard let message else { return }
        let result: Result<DeliveryReport, KafkaError>
        let topic = message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            result = .success(
                DeliveryReport(topicPartition: TopicPartition(topic, message.pointee.partition), offset: message.pointee.offset))
        } else {
            result = .failure(KafkaError(message.pointee.err, context: "delivery to \(topic)"))
        }
        let purged = message.pointee.err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || message.pointee.err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT
        let target = message.pointee._private.map { Unmanaged<AnyObject>.fromOpaque($0).takeRetainedValue() }
        if let promise = target as? DeliveryPromise {
            promise.resume(result)
        } else if let tag = target as? DeliveryTag {
            if case .failure(let error) = result, !purged, let context = CallbackContext.from(opaque) {
                context.state.withLock {
                    $0.rejected.append((tag.tag, error))
                    $0.deliveryFailures += 1
                    if $0.firstDeliveryFailure == nil { $0.firstDeliveryFailure = error }
                }
            }
        } else if purged {
            // An aborted transaction (or a close) purged the record on purpose: not a delivery failure.
            CallbackContext.from(opaque)?.logger.debug("record purged before delivery", metadata: ["topic": "\(topic)"])
        } else if case .failure(let error) = result, let context = CallbackContext.from(opaque) {
            context.state.withLock {
                $0.deliveryFailures += 1
                if $0.firstDeliveryFailure == nil { $0.firstDeliveryFailure = error }
            }
            context.logger.error("record not delivered: \(error)")
        }
    }

private let rebalanceCallback:
    @convention(c) (OpaquePointer?, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?, UnsafeMutableRawPointer?) -> Void = {
        handle, err, partitions, opaque in
        guard let handle, let context = CallbackContext.from(opaque) else { return }
        let list = partitions.map(TopicPartitionList.partitions(in:)) ?? []
        // NULL when the consumer has no group protocol any more (a revocation while it closes): then the assignment
        // is given up whole, as with the eager protocol.
        let cooperative = rd_kafka_rebalance_protocol(handle).map { String(cString: $0) == "COOPERATIVE" } ?? false
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            // Only an assignment librdkafka took is reported as one: its messages will follow.
            let failure: KafkaError? =
                cooperative
                ? rd_kafka_incremental_assign(handle, partitions).map { KafkaError(consuming: $0, context: "assign \(list)") }
                : { let err = rd_kafka_assign(handle, partitions); return err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(err, context: "assign \(list)") }()
            if let failure {
                context.state.withLock { $0.pendingEvents.append(.error(failure)) }
                context.logger.error("could not take the assigned partitions: \(failure)")
            } else {
                context.state.withLock { $0.pendingEvents.append(.assigned(list)) }
                context.logger.info("partitions assigned", metadata: ["partitions": "\(list)"])
            }
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(handle) != 0
            // Reported as revoked whatever librdkafka answers: from now on nothing may be written for them.
            let failure: KafkaError? =
                cooperative
                ? rd_kafka_incremental_unassign(handle, partitions).map { KafkaError(consuming: $0, context: "unassign \(list)") }
                : { let err = rd_kafka_assign(handle, nil); return err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(err, context: "unassign \(list)") }()
            context.state.withLock {
                if let failure { $0.pendingEvents.append(.error(failure)) }
                $0.pendingEvents.append(.revoked(list, lost: lost))
            }
            if let failure { context.logger.error("unassigning revoked partitions failed: \(failure)") }
            context.logger.info("partitions revoked", metadata: ["partitions": "\(list)", "lost": "\(lost)"])
        default:
            rd_kafka_assign(handle, nil)
            let error = KafkaError(err, context: "rebalance")
            context.state.withLock { $0.pendingEvents.append(.error(error)) }
            context.logger.warning("rebalance failed: \(error)")
        }
    }

/// A tag handed to librdkafka with a record of a transaction: a refused record is reported by its tag.
final class DeliveryTag: Sendable {
    let tag: Int
    init(_ tag: Int) { self.tag = tag }
}

/// A once-only continuation handed to librdkafka with a record and resumed from its delivery report, or
/// earlier when its waiter is cancelled (the report then finds it resumed already).
final class DeliveryPromise: Sendable {
    private let once = OnceContinuation<DeliveryReport>()
    func set(_ continuation: CheckedContinuation<DeliveryReport, any Error>) { once.set(continuation) }
    func resume(_ result: Result<DeliveryReport, KafkaError>) { once.resume(with: result.mapError { $0 as any Error }) }
    func fail(_ error: any Error) { once.resume(with: .failure(error)) }
}

// MARK: - Partition lists

enum TopicPartitionList {
    static func partitions(in list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> [TopicPartition] {
        (0..<Int(list.pointee.cnt)).map { i in
            let e = list.pointee.elems[i]
            return TopicPartition(String(cString: e.topic), e.partition)
        }
    }

    static func offsets(in list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> [TopicPartitionOffset] {
        (0..<Int(list.pointee.cnt)).map { i in
            let e = list.pointee.elems[i]
            return TopicPartitionOffset(String(cString: e.topic), e.partition, offset: e.offset)
        }
    }

    /// The first per-partition error in a list that librdkafka filled in.
    static func firstError(in list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> KafkaError? {
        for i in 0..<Int(list.pointee.cnt) where list.pointee.elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR {
            let e = list.pointee.elems[i]
            return KafkaError(e.err, context: "\(String(cString: e.topic))[\(e.partition)]")
        }
        return nil
    }

    static func with<T>(
        _ offsets: [TopicPartitionOffset], _ body: (UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) throws -> T
    ) rethrows -> T {
        let list = rd_kafka_topic_partition_list_new(Int32(offsets.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for o in offsets {
            rd_kafka_topic_partition_list_add(list, o.topicPartition.topic, o.topicPartition.partition).pointee.offset = o.offset
        }
        return try body(list)
    }

    static func with<T>(
        _ partitions: [TopicPartition], _ body: (UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) throws -> T
    ) rethrows -> T {
        try with(partitions.map { TopicPartitionOffset($0, offset: TopicPartitionOffset.stored) }, body)
    }
}

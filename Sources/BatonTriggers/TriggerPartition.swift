import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import CoreMetrics
import Logging
import Metrics
import Synchronization

/// One business partition a trigger service owns, on a task of its own: its transactional producer
/// (`<ns>.triggers.<topic>.<partition>`: initialising it fences whoever had the partition before and ends
/// that owner's open transaction), and the records the poll loop hands it, written in one transaction per
/// batch with the consumed offsets (read-process-write).
///
/// Failures do not stop it and do not spin: a transaction that fails is aborted, the partition is read again
/// from the offset after the last committed batch, after a wait that grows with each failure in a row (100 ms,
/// doubling, up to `maxBackoff`); a fatal producer error (fenced), or failures that go on, make it take the
/// partition anew with a new producer. No record is skipped: a record is only ever behind the committed offset
/// once its transaction committed.
final class TriggerPartition: Sendable {
    let tp: TopicPartition
    let context: TriggerContext
    /// The group member: its group metadata goes into every transaction, and it seeks for the runner.
    let consumer: KafkaConsumer
    /// The previous runner of this partition, if it was still ending when this one was made: it goes first.
    let predecessor: TriggerPartition?

    struct Inbox {
        var messages: [KafkaMessage] = []
        var stopping = false
        var signaled = false
        var waiter: CheckedContinuation<Void, Never>?
        var waiterWantsMessages = true
        /// Everything from this offset must be read again; the poll loop seeks there.
        var reset: Int64?
        var finished = false
        var finishWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0

        mutating func takeWaiter() -> CheckedContinuation<Void, Never>? {
            defer { waiter = nil }
            return waiter
        }
    }
    private let inbox = Mutex(Inbox())

    /// Failures in a row after which the producer is replaced even if it reports no fatal error (a broker that
    /// closes the connection of a fenced producer instead of telling it, as Tansu does, leaves it retrying).
    static let retakeAfterFailures = 4

    init(_ tp: TopicPartition, context: TriggerContext, consumer: KafkaConsumer, after predecessor: TriggerPartition? = nil) {
        self.tp = tp
        self.context = context
        self.consumer = consumer
        self.predecessor = predecessor
    }

    var logger: Logger { context.logger }
    var configuration: TriggerConfiguration { context.configuration }
    var metrics: TriggerMetrics { context.metrics }

    // MARK: What the poll loop calls

    func deliver(_ message: KafkaMessage) {
        inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            // Read before a requested seek took effect: it comes again after it.
            guard i.reset == nil else { return nil }
            i.messages.append(message)
            return i.waiterWantsMessages ? i.takeWaiter() : nil
        }?.resume()
    }

    /// Asks the runner to end: it finishes (commits or aborts) its transaction and closes its producer.
    func stop() {
        inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            i.stopping = true
            return i.takeWaiter()
        }?.resume()
    }

    /// Waits until the runner has ended (or the waiting task is cancelled).
    func finished() async {
        let id = inbox.withLock { i -> Int in
            defer { i.nextWaiter += 1 }
            return i.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = inbox.withLock { i -> Bool in
                    if i.finished || Task.isCancelled { return true }
                    i.finishWaiters[id] = c
                    return false
                }
                if done { c.resume() }
            }
        } onCancel: {
            inbox.withLock { $0.finishWaiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits until the runner has ended or `deadline` passed; whether it ended.
    func finished(before deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.finished()
                return true
            }
            group.addTask {
                try? await Task.sleep(until: deadline)  // cancelled when the runner ends first
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    var backlog: Int { inbox.withLock { $0.messages.count } }

    /// The offset the runner needs the poll loop to seek to, if any.
    var pendingReset: Int64? { inbox.withLock { $0.reset } }

    func resetDone() {
        inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            i.reset = nil
            i.messages.removeAll()
            return i.takeWaiter()
        }?.resume()
    }

    // MARK: The runner's own task

    var isStopping: Bool { inbox.withLock { $0.stopping } || Task.isCancelled }

    func run() async {
        defer {
            let waiters = inbox.withLock { i -> [CheckedContinuation<Void, Never>] in
                i.finished = true
                defer { i.finishWaiters = [:] }
                return Array(i.finishWaiters.values)
            }
            for w in waiters { w.resume() }
        }
        if let predecessor { await predecessor.finished() }
        guard let taken = await take() else { return }
        var producer = taken.producer
        /// The offset after the last committed batch: where reading starts again after a failure.
        var next = taken.committed
        context.readiness.took(tp)
        logger.info("took partition", metadata: ["partition": "\(tp)", "committed": "\(next.map(String.init) ?? "none")"])
        var gaps = GapGuard(enabled: context.gapRereads)
        gaps.expect(next, on: tp)
        var failures = 0
        var failingSince: ContinuousClock.Instant?
        var lagReportedAt = ContinuousClock.now - .seconds(1)
        while !isStopping {
            if ContinuousClock.now - lagReportedAt >= .seconds(1) {
                lagReportedAt = .now
                if let high = consumer.cachedHighWatermark(tp), let next { metrics.lag.record(tp, lag: high - next) }
            }
            let batch = takeBatch(&gaps)
            guard let last = batch.last else {
                await waitForWork(atMost: .milliseconds(100))
                continue
            }
            do {
                try await write(batch, producer: producer)
                next = last.offset + 1
                if failures > 0 {
                    let took = failingSince.map { (ContinuousClock.now - $0).inMilliseconds } ?? 0
                    logger.notice("partition \(tp) commits again after \(failures) failed tries over \(took) ms")
                }
                failures = 0
                failingSince = nil
            } catch {
                failures += 1
                failingSince = failingSince ?? .now
                let delay = backoff(failures)
                let fatal = (error as? KafkaError).flatMap { $0.isFatal ? $0 : nil } ?? producer.fatalError
                logger.warning(
                    "a transaction of partition \(tp) failed; reading again from offset \(next.map(String.init) ?? "the beginning")",
                    metadata: ["try": "\(failures)", "in_ms": "\(delay.inMilliseconds)", "fatal": "\(fatal != nil)", "error": "\(error)"])
                if fatal != nil || failures % Self.retakeAfterFailures == 0 {
                    logger.error("partition \(tp) takes a new producer", metadata: ["error": "\(fatal.map { "\($0)" } ?? "\(error)")"])
                    await producer.close(timeout: .seconds(1))
                    guard let fresh = await take() else { return }
                    producer = fresh.producer
                    // After the fence the group's committed offset is what committed transactions consumed.
                    next = fresh.committed ?? next
                }
                requestReset(to: next ?? TopicPartitionOffset.beginning)
                gaps.expect(next, on: tp)
                await waitForWork(atMost: delay, wakeOnMessages: false)
            }
        }
        await producer.close(timeout: .seconds(2))
        metrics.lag.forget(tp)
    }

    /// A new transactional producer for the partition, initialised (fencing any earlier one), and the group's
    /// committed offset after that (nil when none); tried again with a backoff until it works or the runner stops.
    func take() async -> (producer: KafkaProducer, committed: Int64?)? {
        var failures = 0
        while !isStopping {
            do {
                var c = KafkaProducerConfiguration(client: configuration.client)
                c.transactionalID = "\(configuration.names.triggersGroup).\(tp.topic).\(tp.partition)"
                c.linger = .milliseconds(1)
                let producer = try KafkaProducer(configuration: c, logger: logger)
                do {
                    try await producer.initTransactions()
                    let committed = try await consumer.committed([tp]).first?.offset ?? -1
                    return (producer, committed >= 0 ? committed : nil)
                } catch {
                    await producer.close(timeout: .seconds(1))
                    throw error
                }
            } catch {
                failures += 1
                let delay = backoff(failures)
                logger.warning("cannot take partition \(tp); trying again", metadata: ["try": "\(failures)", "in_ms": "\(delay.inMilliseconds)", "error": "\(error)"])
                await waitForWork(atMost: delay, wakeOnMessages: false)
            }
        }
        return nil
    }

    /// Turns the batch into records and writes them with the consumed offsets in one transaction; counts what
    /// it did once it committed. On failure the transaction is aborted and nothing of it counts.
    func write(_ batch: [KafkaMessage], producer: KafkaProducer) async throws {
        let began = ContinuousClock.now
        let plan = context.plan.current
        let names = configuration.names
        let now = configuration.clock()
        let outcomes = batch.map { plan.process($0, names: names, now: now) }
        do {
            try producer.beginTransaction()
            for outcome in outcomes {
                for record in outcome.records { try await producer.enqueue(record) }
            }
            if let last = batch.last { try await producer.sendOffsetsToTransaction([last.nextOffset], consumer: consumer) }
            try await producer.commitTransaction()
        } catch {
            metrics.transactions("aborted").increment()
            do { try await producer.abortTransaction() } catch let abortError {
                logger.debug("abort after a failed transaction failed too", metadata: ["partition": "\(tp)", "error": "\(abortError)"])
            }
            throw error
        }
        metrics.transactions("committed").increment()
        metrics.batch.record(duration: ContinuousClock.now - began)
        for outcome in outcomes {
            if let reason = outcome.deadLetter {
                logger.warning("dead letter", metadata: ["reason": "\(reason)"])
                metrics.deadLetters.record(.unreadable)
            }
            for label in outcome.labels { metrics.records(tp.topic, label).increment() }
            for workflow in outcome.started { metrics.starts(workflow).increment() }
        }
        logger.debug(
            "committed",
            metadata: [
                "partition": "\(tp)", "records": "\(batch.count)", "written": "\(outcomes.reduce(0) { $0 + $1.records.count })",
                "ms": "\((ContinuousClock.now - began).inMilliseconds)",
            ])
    }

    func backoff(_ failures: Int) -> Duration {
        min(.milliseconds(100) * (1 << min(max(0, failures - 1), 16)), configuration.maxBackoff)
    }

    /// Up to `maxBatch` records in offset order. A record read before (after a seek back) is dropped; at a gap not
    /// seen before (see `GapGuard`), the batch ends and the partition is read again from the gap's first offset.
    func takeBatch(_ gaps: inout GapGuard) -> [KafkaMessage] {
        inbox.withLock { i -> [KafkaMessage] in
            guard i.reset == nil else { return [] }
            var batch: [KafkaMessage] = []
            var used = 0
            defer { i.messages.removeFirst(used) }
            while batch.count < configuration.maxBatch, used < i.messages.count {
                let m = i.messages[used]
                switch gaps.check(m) {
                case .take:
                    batch.append(m)
                    used += 1
                case .drop:
                    used += 1
                case .filledGap(let from, let to):
                    logger.warning("the broker showed later records before earlier ones; read again, they are there now", metadata: ["partition": "\(tp)", "offsets": "\(from)..<\(to)"])
                    batch.append(m)
                    used += 1
                case .reread(let from):
                    logger.info("offset gap; reading again", metadata: ["partition": "\(tp)", "expected": "\(from)", "got": "\(m.offset)"])
                    i.reset = from
                    used = i.messages.count
                    return batch
                }
            }
            return batch
        }
    }

    func requestReset(to offset: Int64) {
        inbox.withLock { i in
            i.reset = offset
            i.messages.removeAll()
        }
    }

    /// Waits until a record arrives (unless `wakeOnMessages` is false), the runner is stopped, or `atMost` passed.
    func waitForWork(atMost wait: Duration, wakeOnMessages: Bool = true) async {
        guard wait > .zero, !Task.isCancelled else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                // Cancelled (returning early) once the wait is over for another reason; the signal it then sends
                // is cleared below. Sent also when the runner's task is cancelled, so that the wait ends.
                try? await Task.sleep(for: wait)
                signal()
            }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = inbox.withLock { i -> Bool in
                    if i.stopping || i.signaled || (wakeOnMessages && !i.messages.isEmpty && i.reset == nil) {
                        i.signaled = false
                        return true
                    }
                    i.waiter = c
                    i.waiterWantsMessages = wakeOnMessages
                    return false
                }
                if now { c.resume() }
            }
            group.cancelAll()
        }
        inbox.withLock { $0.signaled = false }
    }

    private func signal() {
        inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            i.signaled = true
            return i.takeWaiter()
        }?.resume()
    }
}

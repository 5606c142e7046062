import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import CoreMetrics
import DequeModule
import Foundation
import Logging
import Synchronization

/// Runs one events partition on its own task: takes it (fence, rebuild), then applies its events in batches,
/// one transaction each, while the poll loop keeps reading the next ones into its inbox. Partitions do not
/// wait for each other.
///
/// Failures do not stop it and do not spin: a transaction that fails is retried on the same batch (the
/// events are still in memory) with a growing backoff, and the on-call is alerted when failures go on; records
/// the broker refuses make their instances go on without them; a fatal producer error (fenced, or unusable)
/// makes it take the partition anew, as a new owner would.
final class PartitionRunner: Sendable {
    let partition: Int32
    let context: CoordinatorContext
    /// The previous runner of this partition, if it was still ending when this one was made: it goes first.
    let predecessor: PartitionRunner?

    enum Reset: Equatable {
        case none
        /// Everything from this offset must be read again; the poll loop seeks there.
        case requested(Int64)
    }

    struct Inbox {
        var messages = Deque<KafkaMessage>()
        var stopping = false
        var signaled = false
        var waiter: CheckedContinuation<Void, Never>?
        /// Whether the waiting runner wants to be woken by an event (not while it backs off).
        var waiterWantsMessages = true
        var reset = Reset.none
        var finished = false
        var finishWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        /// The end of the partition when this runner took it (its assignment mark): timers wait until what was
        /// queued up to it is applied. The first end the poll loop saw (a fetch's high watermark), lowered by a
        /// partition EOF (read_committed: the end of what committed).
        var end: Int64?
    }
    private let inbox = Mutex(Inbox())

    /// `baton_coordinator_event_wait_seconds` by stage.
    let fetchedWait: CoreMetrics.Timer
    let batchedWait: CoreMetrics.Timer

    init(partition: Int32, context: CoordinatorContext, after predecessor: PartitionRunner? = nil) {
        self.partition = partition
        self.context = context
        self.predecessor = predecessor
        fetchedWait = context.metrics.eventWait("fetched")
        batchedWait = context.metrics.eventWait("batched")
    }

    var logger: Logger { context.logger }
    var configuration: CoordinatorConfiguration { context.configuration }

    // MARK: What the poll loop calls

    func deliver(_ message: KafkaMessage) {
        if let written = message.timestamp {
            fetchedWait.recordMilliseconds(max(0, WallClock.millis() - written))
        }
        let waiter = inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            // Read before a requested seek took effect: it comes again after it.
            if case .requested = i.reset { return nil }
            i.messages.append(message)
            return i.waiterWantsMessages ? i.takeWaiter() : nil
        }
        waiter?.resume()
    }

    /// Asks the runner to end: it finishes (commits or aborts) its transaction and releases the partition.
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

    /// Whether the poll loop has told the runner where its partition ended when it was taken.
    var knowsEnd: Bool { inbox.withLock { $0.end != nil } }

    /// The poll loop saw the partition's end at `offset` (a fetch's high watermark, or a partition EOF).
    func observeEnd(_ offset: Int64) {
        inbox.withLock { $0.end = min($0.end ?? offset, offset) }
    }

    /// The offset the runner needs the poll loop to seek to, if any.
    var pendingReset: Int64? {
        inbox.withLock { i in if case .requested(let offset) = i.reset { offset } else { nil } }
    }

    func resetDone() {
        inbox.withLock { i -> CheckedContinuation<Void, Never>? in
            i.reset = .none
            i.messages.removeAll()
            return i.takeWaiter()
        }?.resume()
    }

    // MARK: The runner's own task

    var isStopping: Bool { inbox.withLock { $0.stopping } }

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
        guard var owned = await take() else { return }
        context.readiness.took(partition)
        var gaps = fresh(owned)
        var timerFailures = 0
        var timersBlockedUntil = ContinuousClock.now
        var timersHeld = TimerHold()
        while !isStopping {
            let now = configuration.clock()
            // Timers fire once the events queued when the partition was taken are applied (a heartbeat waiting
            // there must move its timer first), and only while this process may write for the partition: a
            // process that was frozen past its poll interval may have lost it without knowing yet.
            let timersMayFire = timersHeld.released(owned, end: inbox.withLock { $0.end }, logger: logger)
                && context.writeGate.mayWrite(polledWithin: configuration.sessionTimeout / 3) && context.clockCheck.mayFireTimers
            if timersMayFire, ContinuousClock.now >= timersBlockedUntil {
                let due = owned.dueTimers(at: now)
                if !due.isEmpty {
                    let failed = await owned.fire(due)
                    timerFailures = failed > 0 ? timerFailures + 1 : 0
                    if failed > 0 { timersBlockedUntil = .now + backoff(timerFailures) }
                }
            }
            let batch = takeBatch(&gaps)
            let taken = WallClock.millis()
            for m in batch { if let written = m.timestamp { batchedWait.recordMilliseconds(max(0, taken - written)) } }
            if batch.isEmpty {
                let dueIn = timersMayFire ? owned.nextDue.map { Duration.milliseconds(max(0, $0 - configuration.clock())) } ?? configuration.idleWait : configuration.idleWait
                await waitForWork(atMost: min(dueIn, configuration.idleWait))
                continue
            }
            switch await process(batch, owned: &owned) {
            case .done: break
            case .stopped: break
            case .retaken:
                gaps = fresh(owned)
                // Taken anew: what is queued now goes first again.
                timersHeld = TimerHold()
                inbox.withLock { $0.end = nil }
            }
        }
        await owned.release()
    }

    /// Takes the partition, trying again with a backoff (and alerting) until it works or the runner is stopped.
    func take() async -> OwnedPartition? {
        var failing = FailureEpisode()
        while !isStopping {
            do {
                let owned = try await OwnedPartition.take(partition, context: context)
                await failing.ended(self, "takes events partition \(partition) again")
                return owned
            } catch {
                if await failing.failed(self, "cannot take events partition \(partition)", error) { return nil }
            }
        }
        return nil
    }

    enum Outcome { case done, stopped, retaken }

    /// Applies a batch until it is written. What a failure means decides what comes next (see the type's doc).
    func process(_ batch: [KafkaMessage], owned: inout OwnedPartition) async -> Outcome {
        var refused: [RecordOrigin: String] = [:]
        var failing = FailureEpisode()
        while true {
            do {
                try await owned.process(batch, now: configuration.clock(), refused: refused)
                await failing.ended(self, "commits events partition \(partition) again")
                return .done
            } catch let error as RecordsRefused {
                let new = error.refused.filter { refused[$0.key] == nil }
                guard !new.isEmpty else {
                    logger.error("the broker refused the same records again: \(error)", metadata: ["partition": "\(partition)"])
                    if await failing.failed(self, "cannot commit events partition \(partition)", error) { return .stopped }
                    continue
                }
                refused.merge(new) { a, _ in a }
            } catch let stall as WriteGate.Stalled {
                logger.warning("\(stall); not writing until the group confirms the partition", metadata: ["partition": "\(partition)"])
                while let until = context.writeGate.openAt, !isStopping { await waitForWork(atMost: until - .now, wakeOnMessages: false) }
                if isStopping { return .stopped }
            } catch {
                if let fatal = (error as? KafkaError).flatMap({ $0.isFatal ? $0 : nil }) ?? owned.producer.fatalError {
                    logger.error("partition \(partition) lost its producer: \(fatal); taking the partition anew")
                    await owned.release()
                    guard let fresh = await take() else { return .stopped }
                    owned = fresh
                    requestReset(to: fresh.nextOffset ?? TopicPartitionOffset.beginning)
                    return .retaken
                }
                if await failing.failed(self, "cannot commit events partition \(partition)", error) { return .stopped }
            }
        }
    }

    func backoff(_ failures: Int) -> Duration {
        let base = Duration.milliseconds(100) * (1 << min(max(0, failures - 1), 16))
        return min(base, configuration.maxBackoff)
    }

    /// A gap guard that expects the partition's next offset to process.
    func fresh(_ owned: OwnedPartition) -> GapGuard {
        var gaps = GapGuard(enabled: context.gapRereads)
        gaps.expect(owned.nextOffset, on: TopicPartition(configuration.names.events, partition))
        return gaps
    }

    /// Up to `maxBatch` events in offset order. An event processed already (read again after a seek) is
    /// dropped; at a gap not seen before (see `GapGuard`), the batch ends and the partition is read again from
    /// the gap's first offset.
    func takeBatch(_ gaps: inout GapGuard) -> [KafkaMessage] {
        inbox.withLock { i -> [KafkaMessage] in
            if case .requested = i.reset { return [] }
            var batch: [KafkaMessage] = []
            while batch.count < configuration.maxBatch, let m = i.messages.first {
                switch gaps.check(m) {
                case .take:
                    batch.append(i.messages.removeFirst())
                case .drop:
                    i.messages.removeFirst()
                case .filledGap(let from, let to):
                    logger.warning(
                        "the broker showed later records before earlier ones; read again, they are there now",
                        metadata: ["partition": "\(partition)", "offsets": "\(from)..<\(to)"])
                    batch.append(i.messages.removeFirst())
                case .reread(let from):
                    logger.info("offset gap on the events topic; reading again", metadata: ["partition": "\(partition)", "expected": "\(from)", "got": "\(m.offset)"])
                    i.reset = .requested(from)
                    i.messages.removeAll()
                    return batch
                }
            }
            return batch
        }
    }

    func requestReset(to offset: Int64) {
        inbox.withLock { i in
            i.reset = .requested(offset)
            i.messages.removeAll()
        }
    }

    /// Waits until an event arrives (unless `wakeOnMessages` is false), the runner is stopped, or `atMost`
    /// passed.
    func waitForWork(atMost wait: Duration, wakeOnMessages: Bool = true) async {
        guard wait > .zero else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                // Cancelled (returning early) once the wait is over for another reason.
                try? await Task.sleep(for: wait)
                if !Task.isCancelled { signal() }
            }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = inbox.withLock { i -> Bool in
                    if i.stopping || i.signaled || (wakeOnMessages && !i.messages.isEmpty && i.reset == .none) {
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

/// Whether a runner's timers may fire: not before it has applied the events that were on its partition when it
/// took it (up to the assignment mark), so that a new owner applies the heartbeats and results queued for it
/// before it fires what looks overdue. Released once, for as long as the runner holds the partition.
struct TimerHold {
    var isReleased = false
    let since = ContinuousClock.now

    mutating func released(_ owned: OwnedPartition, end: Int64?, logger: Logger) -> Bool {
        if isReleased { return true }
        guard let end, (owned.nextOffset ?? 0) >= end else { return false }
        isReleased = true
        logger.info(
            "applied the events queued when the partition was taken; its timers fire from now",
            metadata: ["partition": "\(owned.partition)", "mark": "\(end)", "held_ms": "\((ContinuousClock.now - since).inMilliseconds)"])
        return true
    }
}

/// Failures in a row of one thing a runner must do (take its partition, commit a batch): each is followed by
/// a wait that grows, and once they go on (`alertAfterFailures` tries, or `alertAfter`), the on-call gets a
/// critical alert, sent again until it is delivered; a notice follows when it works again.
struct FailureEpisode {
    var failures = 0
    var since: ContinuousClock.Instant?
    var alerted = false

    /// Records a failure, alerts when due, and waits before the next try. True when the runner was stopped meanwhile.
    mutating func failed(_ runner: PartitionRunner, _ what: String, _ error: any Error) async -> Bool {
        let configuration = runner.configuration
        failures += 1
        let since = self.since ?? .now
        self.since = since
        let delay = runner.backoff(failures)
        runner.logger.warning(
            "\(what); trying again", metadata: ["partition": "\(runner.partition)", "try": "\(failures)", "in_ms": "\(delay.inMilliseconds)", "error": "\(error)"])
        if !alerted, failures >= configuration.alertAfterFailures || ContinuousClock.now - since >= configuration.alertAfter {
            alerted = await runner.context.engineAlert(
                partition: runner.partition, severity: .critical,
                "coordinator \(configuration.identity) \(what): \(failures) tries failed over \((ContinuousClock.now - since).inMilliseconds / 1000) s; the last: \(error)")
        }
        await runner.waitForWork(atMost: delay, wakeOnMessages: false)
        return runner.isStopping
    }

    /// It worked: after an alert, the on-call hears that it is over.
    mutating func ended(_ runner: PartitionRunner, _ what: String) async {
        defer { self = FailureEpisode() }
        guard failures > 0 else { return }
        let took = since.map { (ContinuousClock.now - $0).inMilliseconds / 1000 } ?? 0
        runner.logger.notice("coordinator \(what) after \(failures) failed tries over \(took) s", metadata: ["partition": "\(runner.partition)"])
        if alerted {
            await runner.context.engineAlert(
                partition: runner.partition, severity: .warning, "coordinator \(runner.configuration.identity) \(what) after \(failures) failed tries over \(took) s")
        }
    }
}

extension PartitionRunner.Inbox {
    mutating func takeWaiter() -> CheckedContinuation<Void, Never>? {
        defer { waiter = nil }
        return waiter
    }
}

import BatonKafka
import DequeModule
import Logging
import Synchronization

/// What passes between a group's poll loop and the task that runs one of its partitions: the records read and
/// not yet taken, a seek the runner asks for, the partition's end when it was taken, and the stop, wake and
/// finish protocol. The poll loop calls `deliver`, `observeEnd`, `pendingReset`/`resetDone`, `stop` and
/// `finished`; the runner's task calls the rest. Thread-safe.
public final class PartitionInbox: Sendable {
    public let tp: TopicPartition
    let logger: Logger

    struct State {
        var messages = Deque<KafkaMessage>()
        var stopping = false
        var signaled = false
        var waiter: CheckedContinuation<Void, Never>?
        /// Whether the waiting runner wants to be woken by a record (not while it backs off).
        var waiterWantsMessages = true
        /// Everything from this offset must be read again; the poll loop seeks there.
        var reset: Int64?
        var finished = false
        var finishWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        /// The end of the partition when the runner took it (its assignment mark): the first end the poll loop
        /// saw (a fetch's high watermark), lowered by a partition EOF (read_committed: the end of what committed).
        var end: Int64?

        mutating func takeWaiter() -> CheckedContinuation<Void, Never>? {
            defer { waiter = nil }
            return waiter
        }
    }
    private let state = Mutex(State())

    public init(_ tp: TopicPartition, logger: Logger) {
        self.tp = tp
        self.logger = logger
    }

    // MARK: What the poll loop calls

    public func deliver(_ message: KafkaMessage) {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            // Read before a requested seek took effect: it comes again after it.
            guard s.reset == nil else { return nil }
            s.messages.append(message)
            return s.waiterWantsMessages ? s.takeWaiter() : nil
        }?.resume()
    }

    /// Asks the runner to end: it finishes (commits or aborts) its transaction and releases the partition.
    public func stop() {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.stopping = true
            return s.takeWaiter()
        }?.resume()
    }

    /// Waits until the runner has ended (or the waiting task is cancelled).
    public func finished() async {
        let id = state.withLock { s -> Int in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.finished || Task.isCancelled { return true }
                    s.finishWaiters[id] = c
                    return false
                }
                if done { c.resume() }
            }
        } onCancel: {
            state.withLock { $0.finishWaiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits until the runner has ended or `deadline` passed; whether it ended.
    public func finished(before deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.finished()
                // Also returns when the waiting task is cancelled: say whether the runner really ended.
                return self.isFinished
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

    /// Whether the runner has ended.
    public var isFinished: Bool { state.withLock { $0.finished } }

    /// Records read and not yet taken.
    public var backlog: Int { state.withLock { $0.messages.count } }

    /// Whether the poll loop has told the runner where its partition ended when it was taken.
    public var knowsEnd: Bool { state.withLock { $0.end != nil } }

    /// The poll loop saw the partition's end at `offset` (a fetch's high watermark, or a partition EOF).
    public func observeEnd(_ offset: Int64) {
        state.withLock { $0.end = min($0.end ?? offset, offset) }
    }

    /// The offset the runner needs the poll loop to seek to, if any.
    public var pendingReset: Int64? { state.withLock { $0.reset } }

    /// The poll loop sought to `pendingReset`: what it reads now comes from there.
    public func resetDone() {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.reset = nil
            s.messages.removeAll()
            return s.takeWaiter()
        }?.resume()
    }

    // MARK: What the runner calls

    /// Asked to stop, or the runner's task was cancelled.
    public var isStopping: Bool { state.withLock { $0.stopping } || Task.isCancelled }

    /// The partition's end when it was taken, once the poll loop knows it.
    public var end: Int64? { state.withLock { $0.end } }

    /// Forgets the end (the partition was taken anew: the poll loop tells the new one).
    public func forgetEnd() { state.withLock { $0.end = nil } }

    /// The runner has ended: whoever waits in `finished` goes on, and so does any later call.
    public func finish() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.finished = true
            defer { s.finishWaiters = [:] }
            return Array(s.finishWaiters.values)
        }
        for w in waiters { w.resume() }
    }

    /// Up to `max` records in offset order. A record taken before (read again after a seek) is dropped; at a gap
    /// not seen before (see `GapGuard`), the batch ends and the partition is read again from the gap's first
    /// offset. Nothing while a seek is pending.
    public func takeBatch(max: Int, gaps: inout GapGuard) -> [KafkaMessage] {
        state.withLock { s -> [KafkaMessage] in
            guard s.reset == nil else { return [] }
            var batch: [KafkaMessage] = []
            while batch.count < max, let m = s.messages.first {
                switch gaps.check(m) {
                case .take:
                    batch.append(s.messages.removeFirst())
                case .drop:
                    s.messages.removeFirst()
                case .filledGap(let from, let to):
                    logger.warning(
                        "the broker showed later records before earlier ones; read again, they are there now",
                        metadata: ["partition": "\(tp)", "offsets": "\(from)..<\(to)"])
                    batch.append(s.messages.removeFirst())
                case .reread(let from):
                    logger.info("offset gap; reading again", metadata: ["partition": "\(tp)", "expected": "\(from)", "got": "\(m.offset)"])
                    s.reset = from
                    s.messages.removeAll()
                    return batch
                }
            }
            return batch
        }
    }

    /// Asks the poll loop to read the partition again from `offset`; what was read meanwhile is dropped.
    public func requestReset(to offset: Int64) {
        state.withLock { s in
            s.reset = offset
            s.messages.removeAll()
        }
    }

    /// Waits until a record arrives (unless `wakeOnMessages` is false), the runner is stopped or its task
    /// cancelled, or `atMost` passed.
    public func waitForWork(atMost wait: Duration, wakeOnMessages: Bool = true) async {
        guard wait > .zero, !Task.isCancelled else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                // Cancelled (returning early) once the wait is over for another reason; the signal it then sends
                // is cleared below. Sent also when the runner's task is cancelled, so that the wait ends.
                try? await Task.sleep(for: wait)
                signal()
            }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.stopping || s.signaled || (wakeOnMessages && !s.messages.isEmpty && s.reset == nil) {
                        s.signaled = false
                        return true
                    }
                    s.waiter = c
                    s.waiterWantsMessages = wakeOnMessages
                    return false
                }
                if now { c.resume() }
            }
            group.cancelAll()
        }
        state.withLock { $0.signaled = false }
    }

    private func signal() {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.signaled = true
            return s.takeWaiter()
        }?.resume()
    }
}

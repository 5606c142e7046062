import BatonKafka
import Logging
import Synchronization

/// A partitioned service's member of its consumer group: polls, hands each partition's records to its runner,
/// starts a runner for each partition the group assigns (after the one still ending, if any) and stops it when
/// the group revokes it, seeks for runners that must read again, and pauses fetching for a runner that falls
/// behind. The only place that polls, assigns and seeks for a partitioned service.
public struct PartitionGroup<Handler: PartitionHandler>: Sendable {
    public let consumer: KafkaConsumer
    public let handler: Handler
    public let readiness: PartitionReadiness
    /// Whether the service was asked to stop (checked between polls, with the task's cancellation).
    let isStopping: @Sendable () -> Bool

    public init(consumer: KafkaConsumer, handler: Handler, readiness: PartitionReadiness, isStopping: @escaping @Sendable () -> Bool) {
        self.consumer = consumer
        self.handler = handler
        self.readiness = readiness
        self.isStopping = isStopping
    }

    var logger: Logger { handler.logger }
    var settings: PartitionSettings { handler.settings }

    /// The loop's view of its partitions.
    struct Members {
        var runners: [TopicPartition: PartitionRunner<Handler>] = [:]
        /// Runners told to stop that had not ended when the loop stopped waiting for them.
        var retiring: [TopicPartition: PartitionRunner<Handler>] = [:]
        var paused = Set<TopicPartition>()
    }

    /// Polls until the service stops, or `Handler.roundEnded` says to end; runs each partition in `group`.
    public func run(in group: inout ThrowingDiscardingTaskGroup<any Error>) async throws {
        var members = Members()
        defer { for runner in members.runners.values { runner.inbox.stop() } }
        var lastPoll = ContinuousClock.now
        while !isStopping() && !Task.isCancelled {
            let events = try await consumer.poll(maxEvents: settings.maxBatch, timeout: .milliseconds(50))
            let polled = ContinuousClock.now
            handler.polled(at: polled, since: polled - lastPoll)
            lastPoll = polled
            var round = PollRound()
            for event in events { await handle(event, &members, &round, group: &group) }
            handler.handled(round, consumer: consumer)
            await tend(&members)
            if await !handler.roundEnded() { break }
        }
        await end(&members)
    }

    func handle(_ event: KafkaConsumerEvent, _ members: inout Members, _ round: inout PollRound, group: inout ThrowingDiscardingTaskGroup<any Error>) async {
        switch event {
        case .assigned(let partitions):
            if !partitions.isEmpty { round.assigned += 1 }
            readiness.joined()
            for tp in partitions where handler.handles(tp) {
                if let old = members.runners.removeValue(forKey: tp) {
                    logger.warning("partition \(tp) assigned again while still held; starting over")
                    old.inbox.stop()
                    members.retiring[tp] = old
                }
                // A runner of this partition still ending goes first: the new one takes the partition after.
                let runner = PartitionRunner(tp, handler: handler, readiness: readiness, after: members.retiring.removeValue(forKey: tp))
                readiness.taking(tp)
                members.runners[tp] = runner
                members.paused.remove(tp)
                group.addTask { await runner.run() }
            }
        case .revoked(let partitions, let lost):
            if !partitions.isEmpty { round.revoked += 1 }
            for tp in partitions { readiness.released(tp) }
            // Each runner ends its transaction (commit or abort) before the partition is let go; the loop waits for
            // that, but not so long that the group takes this member for dead.
            let gone = partitions.compactMap { tp in members.runners.removeValue(forKey: tp).map { (tp, $0) } }
            for (_, runner) in gone { runner.inbox.stop() }
            let deadline = ContinuousClock.now + settings.maxPollInterval / 3
            for (tp, runner) in gone {
                if await runner.inbox.finished(before: deadline) {
                    logger.info("released partition", metadata: ["partition": "\(tp)", "lost": "\(lost)"])
                } else {
                    logger.warning("partition \(tp) is still ending its transaction; going on", metadata: ["lost": "\(lost)"])
                    members.retiring[tp] = runner
                }
                members.paused.remove(tp)
            }
        case .message(let m):
            guard let runner = members.runners[m.topicPartition] else { return }
            handler.delivered(m)
            runner.inbox.deliver(m)
            round.lastRead[m.topicPartition] = m
        case .error(let error):
            handler.consumerError(error)
        case .partitionEOF(let tp, let offset):
            members.runners[tp]?.inbox.observeEnd(offset)
        }
    }

    /// Between polls: tells new runners where their partition ended, seeks for runners that must read again (so
    /// that nothing read before the seek reaches them after), pauses and resumes fetching by backlog.
    func tend(_ members: inout Members) async {
        for (tp, runner) in members.runners {
            let inbox = runner.inbox
            // The partition's end when it was taken: a fetch's high watermark (right on brokers whose ListOffsets
            // answer is not), known after the first fetch of the partition.
            if !inbox.knowsEnd, let high = consumer.cachedHighWatermark(tp) { inbox.observeEnd(high) }
            if let offset = inbox.pendingReset {
                do {
                    try await consumer.seek([TopicPartitionOffset(tp, offset: offset)])
                    inbox.resetDone()
                } catch {
                    logger.warning("could not seek \(tp) to \(offset); trying again: \(error)")
                }
            }
            let backlog = inbox.backlog
            do {
                if backlog > settings.maxBacklog, !members.paused.contains(tp) {
                    try consumer.pause([tp])
                    members.paused.insert(tp)
                } else if backlog < settings.maxBacklog / 2, members.paused.contains(tp) {
                    try consumer.resume([tp])
                    members.paused.remove(tp)
                }
            } catch {
                logger.warning("could not pause or resume \(tp): \(error)")
            }
        }
    }

    /// Stops every runner and waits for them: bounded when the service stops (those still ending when the time is
    /// up are cancelled with the task group, and the broker aborts what they had open when its transaction times
    /// out), unbounded when the loop ends to subscribe again.
    func end(_ members: inout Members) async {
        for runner in members.runners.values { runner.inbox.stop() }
        let bounded = handler.stopsWithinTimeout || isStopping()
        let deadline = ContinuousClock.now + settings.stopTimeout
        var left: [TopicPartition] = []
        for (tp, runner) in Array(members.runners) + Array(members.retiring) {
            if bounded {
                if await !runner.inbox.finished(before: deadline) { left.append(tp) }
            } else {
                await runner.inbox.finished()
            }
        }
        if !left.isEmpty {
            logger.warning(
                "stopping: partitions still ending their transactions after \(settings.stopTimeout); leaving them to the transaction timeout",
                metadata: ["partitions": "\(left.map(\.description).sorted())"])
        }
        members.runners.removeAll()
    }
}

/// Whether a partitioned service is ready: it joined its group and took every partition it was given (or it
/// has nothing to read).
public final class PartitionReadiness: Sendable {
    struct State {
        var joined = false
        var idle = false
        var stopped = false
        var taking = Set<TopicPartition>()
    }
    private let state = Mutex(State())

    public init() {}

    public var isReady: Bool { state.withLock { !$0.stopped && ($0.idle || ($0.joined && $0.taking.isEmpty)) } }
    public func joined() { state.withLock { $0.joined = true } }
    /// Nothing to read: nothing to wait for.
    public func idle(_ idle: Bool) { state.withLock { $0.idle = idle } }
    /// The consumer left its group (to subscribe again, or to stop).
    public func left() {
        state.withLock {
            $0.joined = false
            $0.taking = []
        }
    }
    public func taking(_ tp: TopicPartition) { _ = state.withLock { $0.taking.insert(tp) } }
    /// Taken (fenced and rebuilt), or given up.
    public func took(_ tp: TopicPartition) { _ = state.withLock { $0.taking.remove(tp) } }
    public func released(_ tp: TopicPartition) { took(tp) }
    public func stopped() { state.withLock { $0.stopped = true } }
}

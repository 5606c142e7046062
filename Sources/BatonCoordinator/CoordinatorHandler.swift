import BatonCore
import BatonKafka
import BatonPlanning
import BatonRuntime
import BatonWire
import CoreMetrics
import Foundation
import Logging

/// The coordinator as a partition handler: taking an events partition fences its previous owner and rebuilds
/// its instances (`OwnedPartition.take`); between batches its due timers fire; a batch is applied and written
/// in one transaction (`OwnedPartition.process`). Records the broker refuses make their instances go on without
/// them; a write gate held (the process was frozen) waits; a lost producer takes the partition anew.
struct CoordinatorHandler: PartitionHandler {
    let context: CoordinatorContext
    let settings: PartitionSettings
    /// `baton_coordinator_event_wait_seconds` by stage.
    let fetchedWait: CoreMetrics.Timer
    let batchedWait: CoreMetrics.Timer

    init(context: CoordinatorContext) {
        self.context = context
        let c = context.configuration
        settings = PartitionSettings(
            maxBatch: c.maxBatch, idleWait: c.idleWait, maxBacklog: c.maxBacklog, maxPollInterval: c.maxPollInterval, stopTimeout: c.stopTimeout,
            gapRereads: context.gapRereads,
            retry: RetryPolicy(backoff: Backoff(max: c.maxBackoff), alertAfterFailures: c.alertAfterFailures, alertAfter: c.alertAfter),
            name: "coordinator \(c.identity)")
        fetchedWait = context.metrics.eventWait("fetched")
        batchedWait = context.metrics.eventWait("batched")
    }

    var logger: Logger { context.logger }
    var configuration: CoordinatorConfiguration { context.configuration }

    // MARK: A partition

    func take(_ tp: TopicPartition, inbox: PartitionInbox) async throws -> OwnedPartition {
        try await OwnedPartition.take(tp.partition, context: context)
    }

    func nextOffset(_ partition: OwnedPartition) -> Int64? { partition.nextOffset }

    func release(_ partition: OwnedPartition) async { await partition.release() }

    /// Fires due timers, once the events queued when the partition was taken are applied (a heartbeat waiting
    /// there must move its timer first), and only while this process may write for the partition: a process that
    /// was frozen past its poll interval may have lost it without knowing yet.
    func between(_ owned: inout OwnedPartition, inbox: PartitionInbox) async -> Duration {
        let timersMayFire = owned.timersReleased(caughtUp: inbox.caughtUp(next: owned.nextOffset))
            && context.writeGate.mayWrite(polledWithin: configuration.sessionTimeout / 3) && context.clockCheck.mayFireTimers
        guard timersMayFire else { return settings.idleWait }
        if ContinuousClock.now >= owned.timersBlockedUntil {
            let due = owned.dueTimers(at: configuration.clock())
            if !due.isEmpty {
                let failed = await owned.fire(due)
                owned.timerFailures = failed > 0 ? owned.timerFailures + 1 : 0
                if failed > 0 { owned.timersBlockedUntil = .now + settings.retry.backoff.delay(afterFailures: owned.timerFailures) }
            }
        }
        return owned.nextDue.map { .milliseconds(max(0, $0 - configuration.clock())) } ?? settings.idleWait
    }

    /// Records the broker refused in earlier tries of the batch: left out, their instances go on without them.
    func newAttempt() -> [RecordOrigin: String] { [:] }

    func commit(_ batch: [KafkaMessage], to owned: inout OwnedPartition, attempt: inout [RecordOrigin: String]) async throws {
        try await owned.process(batch, now: configuration.clock(), refused: attempt)
    }

    func failure(_ error: any Error, of owned: OwnedPartition, attempt: inout [RecordOrigin: String]) -> CommitFailure {
        if let error = error as? RecordsRefused<RecordOrigin> {
            let new = error.refused.filter { attempt[$0.key] == nil }
            guard !new.isEmpty else {
                logger.error("the broker refused the same records again: \(error)", metadata: ["partition": "\(owned.partition)"])
                return .backOff
            }
            attempt.merge(new) { a, _ in a }
            return .tryAgainNow
        }
        if let stall = error as? WriteGate.Stalled {
            let gate = context.writeGate
            return .hold(reason: "\(stall)", openUntil: { gate.openAt })
        }
        if let fatal = (error as? KafkaError).flatMap({ $0.isFatal ? $0 : nil }) ?? owned.producer.fatalError { return .takeAnew(reason: "\(fatal)") }
        return .backOff
    }

    func alert(_ tp: TopicPartition, severity: AlertSeverity, _ message: String) async -> Bool {
        await context.alerts.send(key: "coordinator/\(tp.partition)", partition: tp.partition, severity: severity, message)
    }

    // MARK: The poll loop's hooks

    func describe(_ tp: TopicPartition) -> String { "events partition \(tp.partition)" }

    func handles(_ tp: TopicPartition) -> Bool { tp.topic == configuration.names.events }

    func delivered(_ message: KafkaMessage) {
        if let written = message.timestamp { fetchedWait.recordMilliseconds(max(0, WallClock.millis() - written)) }
    }

    func took(_ batch: [KafkaMessage]) {
        let taken = WallClock.millis()
        for m in batch { if let written = m.timestamp { batchedWait.recordMilliseconds(max(0, taken - written)) } }
    }

    func polled(at instant: ContinuousClock.Instant, since: Duration) {
        if since > configuration.sessionTimeout / 3 {
            // Frozen (or starved) for long enough that the group may have moved our partitions on without telling
            // us yet: write nothing until it has had time to.
            logger.warning("stalled since the poll for \(since.inMilliseconds) ms; holding writes until the group confirms the partitions")
            context.writeGate.hold(until: instant + configuration.sessionTimeout / 3)
        }
        context.writeGate.polled(at: instant)
        context.clockCheck.tick(now: configuration.clock())
    }

    /// Counts rebalances (when partitions change hands), and takes the last record of each events partition read
    /// as a clock sample when it was the partition's end.
    func handled(_ round: PollRound, consumer: KafkaConsumer) {
        if round.assigned > 0 { context.metrics.rebalances("assigned").increment(by: round.assigned) }
        if round.revoked > 0 { context.metrics.rebalances("revoked").increment(by: round.revoked) }
        guard !round.lastRead.isEmpty else { return }
        let now = configuration.clock()
        for (tp, m) in round.lastRead {
            if let high = consumer.cachedHighWatermark(tp), m.offset + 1 >= high { context.clockCheck.sample(m, now: now) }
        }
    }
}

extension OwnedPartition {
    /// Whether its timers may fire: not before it has applied the events that were on its partition when it took
    /// it (`caughtUp`: up to the assignment mark), so that a new owner applies the heartbeats and results queued
    /// for it before it fires what looks overdue. Released once, for as long as it holds the partition.
    func timersReleased(caughtUp: Bool) -> Bool {
        if timersHeld == nil { return true }
        guard caughtUp, let since = timersHeld else { return false }
        timersHeld = nil
        logger.info(
            "applied the events queued when the partition was taken; its timers fire from now",
            metadata: ["partition": "\(partition)", "next": "\(nextOffset.map(String.init) ?? "none")", "held_ms": "\((ContinuousClock.now - since).inMilliseconds)"])
        return true
    }
}

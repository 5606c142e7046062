import BatonKafka
import Logging

/// Runs one partition on its own task: takes it (fence, rebuild), then applies its records in batches, one
/// transaction each, while the poll loop keeps reading the next ones into its inbox. Partitions do not wait
/// for each other.
///
/// Failures do not stop it and do not spin: a transaction that fails is tried again on the same batch (the
/// records are still in memory) after a wait that grows, and the on-call is alerted when failures go on; a
/// lost producer (fenced, or unusable, or failures past `RetryPolicy.retakeAfterFailures`) makes it take the
/// partition anew, as a new owner would, and read again from what committed.
public final class PartitionRunner<Handler: PartitionHandler>: Sendable {
    public let inbox: PartitionInbox
    let handler: Handler
    let readiness: PartitionReadiness
    /// The previous runner of this partition, if it was still ending when this one was made: it goes first.
    let predecessor: PartitionRunner?

    public init(_ tp: TopicPartition, handler: Handler, readiness: PartitionReadiness, after predecessor: PartitionRunner? = nil) {
        inbox = PartitionInbox(tp, logger: handler.logger)
        self.handler = handler
        self.readiness = readiness
        self.predecessor = predecessor
    }

    public var tp: TopicPartition { inbox.tp }
    var logger: Logger { handler.logger }
    var settings: PartitionSettings { handler.settings }

    public func run() async {
        defer { inbox.finish() }
        if let predecessor { await predecessor.inbox.finished() }
        guard var partition = await take() else { return }
        readiness.took(tp)
        var gaps = fresh(partition)
        /// Failed commits in a row, across retakes: it ends only when a commit works.
        var failing = RetryEpisode(policy: settings.retry, clock: ContinuousClock())
        while !inbox.isStopping {
            let wait = await handler.between(&partition, inbox: inbox)
            let batch = inbox.takeBatch(max: settings.maxBatch, gaps: &gaps)
            if batch.isEmpty {
                await inbox.waitForWork(atMost: min(wait, settings.idleWait))
                continue
            }
            handler.took(batch)
            switch await commit(batch, &partition, &failing) {
            case .committed, .stopped: break
            case .retaken: gaps = fresh(partition)
            case .released: return  // stopped while taking it anew: the old one is released already
            }
        }
        await handler.release(partition)
    }

    /// Takes the partition, trying again with a backoff (and alerting) until it works or the runner is stopped.
    func take() async -> Handler.Partition? {
        var episode = RetryEpisode(policy: settings.retry, clock: ContinuousClock())
        while !inbox.isStopping {
            do {
                let partition = try await handler.take(tp, inbox: inbox)
                await succeeded(&episode, "takes \(handler.describe(tp)) again")
                logger.info("took partition", metadata: ["partition": "\(tp)", "committed": "\(handler.nextOffset(partition).map(String.init) ?? "none")"])
                return partition
            } catch {
                if await failed(&episode, "cannot take \(handler.describe(tp))", error).stopped { return nil }
            }
        }
        return nil
    }

    enum Outcome {
        case committed
        /// Stopped; the partition is still held.
        case stopped
        /// Taken anew: the batch is read again.
        case retaken
        /// Stopped while taking the partition anew: nothing is held any more.
        case released
    }

    /// Applies a batch until it is written, or the runner is stopped, or the partition was taken anew (then the
    /// batch is read again). `episode` counts failed commits in a row, across batches and retakes.
    func commit(_ batch: [KafkaMessage], _ partition: inout Handler.Partition, _ episode: inout RetryEpisode<ContinuousClock>) async -> Outcome {
        var attempt = handler.newAttempt()
        while !inbox.isStopping {
            do {
                try await handler.commit(batch, to: &partition, attempt: &attempt)
                await succeeded(&episode, "commits \(handler.describe(tp)) again")
                return .committed
            } catch {
                var retake: String?
                switch handler.failure(error, of: partition, attempt: &attempt) {
                case .tryAgainNow:
                    continue
                case .hold(let reason, let openUntil):
                    logger.warning("\(reason); not writing until the group confirms the partition", metadata: ["partition": "\(tp)"])
                    while let until = openUntil(), !inbox.isStopping { await inbox.waitForWork(atMost: until - .now, wakeOnMessages: false) }
                    continue
                case .takeAnew(let reason):
                    retake = reason
                case .backOff:
                    let failure = await failed(&episode, "cannot commit \(handler.describe(tp))", error)
                    if failure.stopped { return .stopped }
                    retake = failure.retake
                }
                if let reason = retake {
                    logger.error("\(handler.describe(tp)) lost its producer: \(reason); taking the partition anew")
                    await handler.release(partition)
                    guard let fresh = await take() else { return .released }
                    partition = fresh
                    // Read again from what committed; the poll loop tells the new owner where the partition ends.
                    inbox.requestReset(to: handler.nextOffset(fresh) ?? TopicPartitionOffset.beginning)
                    inbox.forgetEnd()
                    return .retaken
                }
            }
        }
        return .stopped
    }

    /// A gap guard that expects the partition's next offset.
    func fresh(_ partition: Handler.Partition) -> GapGuard {
        var gaps = GapGuard(enabled: settings.gapRereads)
        gaps.expect(handler.nextOffset(partition), on: tp)
        return gaps
    }

    /// Records a failure, alerts when due, and waits before the next try. Whether the runner was stopped meanwhile,
    /// and why to take the partition anew when failures went on past `RetryPolicy.retakeAfterFailures`.
    func failed(_ episode: inout RetryEpisode<ContinuousClock>, _ what: String, _ error: any Error) async -> (stopped: Bool, retake: String?) {
        let failure = episode.failed()
        logger.warning(
            "\(what); trying again", metadata: ["partition": "\(tp)", "try": "\(failure.count)", "in_ms": "\(failure.delay.inMilliseconds)", "error": "\(error)"])
        if failure.alert {
            let delivered = await handler.alert(
                tp, severity: .critical,
                "\(settings.name) \(what): \(failure.count) tries failed over \(failure.failingFor.inMilliseconds / 1000) s; the last: \(error)")
            episode.alertDelivered(delivered)
        }
        await inbox.waitForWork(atMost: failure.delay, wakeOnMessages: false)
        return (inbox.isStopping, failure.retake ? "\(failure.count) failures in a row; the last: \(error)" : nil)
    }

    /// It worked: after failures, say so; after an alert, the on-call hears that it is over.
    func succeeded(_ episode: inout RetryEpisode<ContinuousClock>, _ what: String) async {
        guard let ended = episode.succeeded() else { return }
        let took = ended.lasted.inMilliseconds / 1000
        logger.notice("\(settings.name) \(what) after \(ended.failures) failed tries over \(took) s", metadata: ["partition": "\(tp)"])
        if ended.alerted {
            _ = await handler.alert(tp, severity: .warning, "\(settings.name) \(what) after \(ended.failures) failed tries over \(took) s")
        }
    }
}

extension PartitionInbox {
    /// Whether the runner has applied everything that was on its partition when it took it (its assignment
    /// mark), `next` being the offset of the next record it applies.
    public func caughtUp(next: Int64?) -> Bool {
        guard let end else { return false }
        return (next ?? 0) >= end
    }
}

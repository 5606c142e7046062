import BatonKafka
import Logging

/// What a partitioned service does with the partitions its group gives it: the coordinator (events partitions)
/// and the trigger service (business topics) are handlers; `PartitionGroup` polls, assigns, revokes and seeks
/// for them, and `PartitionRunner` runs each partition on a task of its own: take it, apply its records in
/// batches, one transaction each, retry what failed, take it anew when its producer is lost, release it.
///
/// A handler is shared by the runners of all its partitions; what belongs to one partition is its `Partition`,
/// which only that partition's runner uses.
public protocol PartitionHandler: Sendable {
    /// One partition as taken: its transactional producer, and whatever state the service keeps for it.
    associatedtype Partition
    /// What the tries of one batch carry from one to the next (records the broker refused, say); made anew for
    /// each batch by `newAttempt`.
    associatedtype Attempt

    var logger: Logger { get }
    var settings: PartitionSettings { get }

    /// Takes the partition: a transactional producer whose initialisation fences the previous owner, the group's
    /// committed offset read after that, and whatever must be rebuilt before the first record is applied. Tried
    /// again (with a backoff, alerting when it goes on) until it works or the runner is stopped.
    func take(_ tp: TopicPartition, inbox: PartitionInbox) async throws -> Partition
    /// The offset of the next record to apply (nil: nothing was committed, read from the beginning).
    func nextOffset(_ partition: Partition) -> Int64?
    /// Gives the partition up: closes its producer (after its transaction ended), forgets its gauges.
    func release(_ partition: Partition) async

    /// Work between batches (due timers, gauges); returns how long the runner may wait for records at most.
    func between(_ partition: inout Partition, inbox: PartitionInbox) async -> Duration
    func newAttempt() -> Attempt
    /// Applies `batch` and writes what results with the consumed offsets in one transaction. On failure nothing
    /// of it happened: the partition's state is as before.
    func commit(_ batch: [KafkaMessage], to partition: inout Partition, attempt: inout Attempt) async throws
    /// What a failed commit calls for.
    func failure(_ error: any Error, of partition: Partition, attempt: inout Attempt) -> CommitFailure
    /// Tells the on-call about the partition (it keeps failing, or works again); whether the alert was delivered.
    func alert(_ tp: TopicPartition, severity: AlertSeverity, _ message: String) async -> Bool

    // Hooks of the poll loop, with defaults that do nothing.

    /// How logs and alerts name a partition ("events partition 3").
    func describe(_ tp: TopicPartition) -> String
    /// Whether the service handles this partition of what its consumer is subscribed to.
    func handles(_ tp: TopicPartition) -> Bool
    /// The poll loop read `message` for a partition this member owns (before its runner has it).
    func delivered(_ message: KafkaMessage)
    /// The runner took `batch` from its inbox.
    func took(_ batch: [KafkaMessage])
    /// A poll returned (before its events are handed out); `since` is how long since the poll before.
    func polled(at instant: ContinuousClock.Instant, since: Duration)
    /// A poll's events were handed out; `round` sums them up.
    func handled(_ round: PollRound, consumer: KafkaConsumer)
    /// The consumer reported an error that it retries itself.
    func consumerError(_ error: KafkaError)
    /// Called after each round of the poll loop; false ends it (the service subscribes to other topics).
    func roundEnded() async -> Bool
    /// Whether the poll loop waits for its runners only up to `settings.stopTimeout` when it ends; when false,
    /// runners end however long it takes (a session that ends to subscribe again).
    var stopsWithinTimeout: Bool { get }
}

extension PartitionHandler {
    public func describe(_ tp: TopicPartition) -> String { "partition \(tp)" }
    public func handles(_ tp: TopicPartition) -> Bool { true }
    public func delivered(_ message: KafkaMessage) {}
    public func took(_ batch: [KafkaMessage]) {}
    public func polled(at instant: ContinuousClock.Instant, since: Duration) {}
    public func handled(_ round: PollRound, consumer: KafkaConsumer) {}
    public func consumerError(_ error: KafkaError) { logger.warning("consumer: \(error)") }
    public func roundEnded() async -> Bool { true }
    public var stopsWithinTimeout: Bool { true }
}

/// What one poll of the group loop handed out, gathered in the pass that hands it out.
public struct PollRound: Sendable {
    /// How many times partitions were assigned to this member, or taken from it (a cooperative rebalance that moves
    /// none of this member's partitions is not counted).
    public var assigned = 0
    public var revoked = 0
    /// The last record read of each partition this member owns.
    public var lastRead: [TopicPartition: KafkaMessage] = [:]

    public init() {}
}

/// Alert severities a partition runner uses (the wire's `Alert.Severity` is mapped by the handler).
public enum AlertSeverity: String, Sendable {
    case warning
    case critical
}

/// What a failed commit calls for.
public enum CommitFailure: Sendable {
    /// Try the same batch again at once (the attempt now knows what to leave out).
    case tryAgainNow
    /// Wait while `openUntil` names a later instant (writes are held), then try again; not a failure.
    case hold(reason: String, openUntil: @Sendable () -> ContinuousClock.Instant?)
    /// A failure: back off (growing), alert when failures go on, and try again.
    case backOff
    /// The producer is lost (fenced, or unusable): release the partition and take it anew, reading again from
    /// the committed offset then.
    case takeAnew(reason: String)
}

/// How a partitioned service runs its partitions.
public struct PartitionSettings: Sendable {
    /// At most this many records go into one transaction (and into one poll).
    public var maxBatch: Int
    /// How long a runner waits for records when nothing else is due sooner.
    public var idleWait: Duration
    /// Records waiting for a partition's transaction beyond this pause its fetching until it is down to half.
    public var maxBacklog: Int
    /// The group's `max.poll.interval.ms`: a revoked partition's runner gets a third of it to end its transaction.
    public var maxPollInterval: Duration
    /// How long a stopping service waits for its runners to end their transactions.
    public var stopTimeout: Duration
    /// Whether to read a partition again when its offsets jump (see `GapRereads`).
    public var gapRereads: Bool
    /// Failures in a row: backoff, alerts, retakes.
    public var retry: RetryPolicy
    /// What the service is called in the runners' logs and alerts ("coordinator host/42").
    public var name: String

    public init(
        maxBatch: Int, idleWait: Duration, maxBacklog: Int, maxPollInterval: Duration, stopTimeout: Duration, gapRereads: Bool,
        retry: RetryPolicy, name: String
    ) {
        self.maxBatch = maxBatch
        self.idleWait = idleWait
        self.maxBacklog = maxBacklog
        self.maxPollInterval = maxPollInterval
        self.stopTimeout = stopTimeout
        self.gapRereads = gapRereads
        self.retry = retry
        self.name = name
    }
}

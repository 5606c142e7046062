/// How long to wait after failures in a row: `first`, doubling with each failure, at most `max`.
public struct Backoff: Sendable, Equatable {
    public var first: Duration
    public var max: Duration

    public init(first: Duration = .milliseconds(100), max: Duration) {
        self.first = first
        self.max = max
    }

    /// The wait after the `failures`-th failure in a row (1 for the first).
    public func delay(afterFailures failures: Int) -> Duration {
        var delay = first
        var doublings = failures - 1
        while doublings > 0, delay < max {
            delay *= 2
            doublings -= 1
        }
        return Swift.min(delay, max)
    }
}

/// When failures in a row of one thing (taking a partition, committing a batch) call for more than a wait.
public struct RetryPolicy: Sendable {
    public var backoff: Backoff
    /// The on-call is alerted after this many failures in a row...
    public var alertAfterFailures: Int
    /// ...or once they have gone on this long.
    public var alertAfter: Duration
    /// After every this many failures in a row the partition is taken anew (a new producer) even if no error
    /// said it was fenced: a broker that closes a fenced producer's connection instead of telling it (Tansu)
    /// leaves it retrying. Nil: only when an error says so.
    public var retakeAfterFailures: Int?

    public init(backoff: Backoff, alertAfterFailures: Int = 5, alertAfter: Duration = .seconds(30), retakeAfterFailures: Int? = nil) {
        self.backoff = backoff
        self.alertAfterFailures = alertAfterFailures
        self.alertAfter = alertAfter
        self.retakeAfterFailures = retakeAfterFailures
    }
}

/// Failures in a row of one thing: each is followed by a wait that grows; once they go on, an alert is due (and
/// due again until it was delivered); when it works again, the episode says how long it lasted and whether
/// whoever was alerted must hear that it is over. Pure: the caller waits, alerts and logs.
public struct RetryEpisode<C: Clock>: Sendable where C.Duration == Duration {
    public let policy: RetryPolicy
    let clock: C
    public private(set) var failures = 0
    public private(set) var since: C.Instant?
    public private(set) var alerted = false

    public init(policy: RetryPolicy, clock: C) {
        self.policy = policy
        self.clock = clock
    }

    /// What a failure calls for.
    public struct Failure: Sendable, Equatable {
        /// The failures in a row, this one included.
        public var count: Int
        /// How long to wait before the next try.
        public var delay: Duration
        /// How long the failures have gone on.
        public var failingFor: Duration
        /// Whether the on-call must be alerted now (call `alertDelivered` with the outcome).
        public var alert: Bool
        /// Whether to take the partition anew before the next try (`RetryPolicy.retakeAfterFailures`).
        public var retake: Bool
    }

    public mutating func failed() -> Failure {
        failures += 1
        let now = clock.now
        let since = self.since ?? now
        self.since = since
        let failingFor = since.duration(to: now)
        let due = !alerted && (failures >= policy.alertAfterFailures || failingFor >= policy.alertAfter)
        let retake = policy.retakeAfterFailures.map { failures % $0 == 0 } ?? false
        return Failure(count: failures, delay: policy.backoff.delay(afterFailures: failures), failingFor: failingFor, alert: due, retake: retake)
    }

    /// Whether the alert `failed()` asked for reached the on-call (if not, the next failure asks again).
    public mutating func alertDelivered(_ delivered: Bool) {
        alerted = alerted || delivered
    }

    /// How an episode ended: the failures it had, how long it lasted, whether the on-call was alerted.
    public struct Ended: Sendable, Equatable {
        public var failures: Int
        public var lasted: Duration
        public var alerted: Bool
    }

    /// It worked: the episode that ended, if there were failures; the next failure starts a new one.
    public mutating func succeeded() -> Ended? {
        defer {
            failures = 0
            since = nil
            alerted = false
        }
        guard failures > 0 else { return nil }
        return Ended(failures: failures, lasted: since.map { $0.duration(to: clock.now) } ?? .zero, alerted: alerted)
    }
}

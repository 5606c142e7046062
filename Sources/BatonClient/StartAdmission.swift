import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Synchronization

/// Backpressure on starts: a start waits while the coordinators working on its events partition are further
/// behind than `maxDelay`, so that an offer above what the engine completes makes starts slower (and the wait
/// visible) instead of piling new instances in front of the results, heartbeats and timer firings of the
/// running ones. A timer fires through its events partition, behind whatever is queued there: without this, a
/// step timeout under overload fires as late as the partition is behind.
///
/// "Behind" is the partition's lag (its end minus the coordinators' committed offset) divided by the rate at
/// which the coordinators committed it over the last `window`. A partition whose committed offset did not move
/// over `window` has no coordinator working on it (they are all down, or none started yet): starts are not held
/// then, they queue in Kafka as they always did, and a coordinator applies them when it takes the partition.
///
/// Between half the limit and the limit, starts are paced rather than let through at once: at what the
/// coordinators get through (their commit rate over the events each start of this client brought to the
/// partition), up to twice that when the queue is short. Without pacing, the starts held while the partition was
/// behind would all go together the moment it was not, and put it further behind than before.
public struct StartAdmissionSettings: Sendable, Equatable {
    /// Starts wait while the coordinators are further behind than this on the instance's partition; nil: never.
    public var maxDelay: Duration?
    /// How long a start waits at most before it is refused as unavailable (`ClientError.Kind.unavailable`).
    public var maxWait: Duration
    /// How often a waiting start reads the lag again (all events partitions in one go, shared by every start).
    public var interval: Duration
    /// The span the rate is measured over, and after which a partition that did not move counts as stalled.
    public var window: Duration

    public init(maxDelay: Duration? = .seconds(2), maxWait: Duration = .seconds(30), interval: Duration = .milliseconds(500), window: Duration = .seconds(10)) {
        self.maxDelay = maxDelay
        self.maxWait = maxWait
        self.interval = interval
        self.window = window
    }

    public static let off = StartAdmissionSettings(maxDelay: nil)

    /// `BATON_START_MAX_DELAY` (a duration such as `2s`; `0` turns the backpressure off) and
    /// `BATON_START_MAX_WAIT` (a duration of at least 1s).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> StartAdmissionSettings {
        var settings = StartAdmissionSettings()
        if let text = environment["BATON_START_MAX_DELAY"], !text.isEmpty {
            if text == "0" {
                settings.maxDelay = nil
            } else {
                guard let delay = Millis.parse(text), delay.value >= 100 else {
                    throw ClientSettingsError(source: "BATON_START_MAX_DELAY", reason: "'\(text)' is not 0 (off) or a duration of at least 100ms, such as 2s")
                }
                settings.maxDelay = .milliseconds(delay.value)
            }
        }
        if let text = environment["BATON_START_MAX_WAIT"], !text.isEmpty {
            guard let wait = Millis.parse(text), wait.value >= 1000 else {
                throw ClientSettingsError(source: "BATON_START_MAX_WAIT", reason: "'\(text)' is not a duration of at least 1s, such as 30s")
            }
            settings.maxWait = .milliseconds(wait.value)
        }
        return settings
    }
}

/// What the lag readings of one events partition say about a start sent to it now.
struct PartitionLoad: Sendable {
    struct Sample: Sendable {
        var at: ContinuousClock.Instant
        /// The coordinators' committed offset (the partition's first offset where they committed none).
        var committed: Int64
        /// The partition's end.
        var end: Int64
        /// How many starts this client had let through to the partition.
        var admitted: Int64 = 0
    }
    /// Oldest first, spanning at most the window (and the one sample just before it).
    private(set) var samples: [Sample] = []
    /// The records the partition grew by for each start this client let through, over the last window in which
    /// it let enough through to tell (at least `minimumStarts`): the results, heartbeats and firings a start brings,
    /// and the records of other clients and triggers, which this client's pace then makes room for.
    private(set) var recordsPerStart: Double?
    static let minimumStarts: Int64 = 20

    enum Verdict: Equatable {
        case admit
        /// Let starts through at most this many per second.
        case pace(perSecond: Double)
        /// Behind by `lag` records, which the coordinators commit in about `behind`.
        case hold(lag: Int64, behind: Duration)
    }

    mutating func add(_ sample: Sample, window: Duration) {
        samples.append(sample)
        // Keep one sample at or before the window's start, so that the rate spans the whole window.
        while samples.count > 2, samples[1].at <= sample.at - window { samples.removeFirst() }
        if let first = samples.first, sample.admitted - first.admitted >= Self.minimumStarts {
            recordsPerStart = max(1, Double(sample.end - first.end) / Double(sample.admitted - first.admitted))
        }
    }

    func verdict(maxDelay: Duration?, window: Duration) -> Verdict {
        guard let maxDelay, let last = samples.last else { return .admit }
        let lag = last.end - last.committed
        guard lag > 0 else { return .admit }
        // The rate over the window: from the oldest sample in it (at least a second before the last).
        guard let first = samples.first(where: { $0.at >= last.at - window }) ?? samples.first, last.at - first.at >= .seconds(1) else { return .admit }
        let committed = last.committed - first.committed
        // Not moving (or moved back: the partition was reset): no coordinator works on it; queue as in an outage.
        guard committed > 0 else { return .admit }
        let rate = Double(committed) / (last.at - first.at).inSeconds
        let behind = Double(lag) / rate
        let limit = maxDelay.inSeconds
        if behind > limit { return .hold(lag: lag, behind: .milliseconds(Int64(behind * 1000))) }
        guard behind > limit / 2, let recordsPerStart else { return .admit }
        // What the coordinators get through, in starts per second: twice that at half the limit, once at the limit.
        return .pace(perSecond: rate / recordsPerStart * (2 - behind / limit))
    }
}

/// Paced starts, one every 1/rate seconds: a start takes the next free turn when it comes within `horizon`
/// (and sleeps until it), and otherwise waits and asks again, when the rate may have changed. Waiting starts are
/// not woken for every turn.
struct StartPace: Sendable {
    /// The next free turn.
    var next: ContinuousClock.Instant

    /// Takes the next free turn if it comes within `horizon`: how long until it (zero: now); nil when it is further.
    mutating func take(rate: Double, horizon: Duration, now: ContinuousClock.Instant) -> Duration? {
        let turn = max(next, now)
        guard turn - now <= horizon else { return nil }
        next = turn + .microseconds(max(1, Int64(1_000_000 / rate)))
        return turn - now
    }
}

/// Reads the coordinators' lag on every events partition (one OffsetFetch for the group, one ListOffsets per
/// partition) at most once per `interval`, when a start asks, and holds starts as `StartAdmissionSettings` says.
final class StartAdmission: Sendable {
    let settings: StartAdmissionSettings
    let names: TopicNames
    let client: KafkaClientConfiguration
    let logger: Logger

    struct State {
        var loads: [Int32: PartitionLoad] = [:]
        var lastRead: ContinuousClock.Instant?
        var reading = false
        var consumer: KafkaConsumer?
        var failing = false
        /// Whether a start asked before.
        var asked = false
        var waits = StartWaits()
        /// Starts let through, by partition (the samples carry them, to tell the records each brings).
        var admitted: [Int32: Int64] = [:]
        var paces: [Int32: StartPace] = [:]
    }
    private let state = Mutex(State())

    init(settings: StartAdmissionSettings, names: TopicNames, client: KafkaClientConfiguration, logger: Logger) {
        self.settings = settings
        self.names = names
        self.client = client
        self.logger = logger
    }

    var waits: StartWaits { state.withLock { $0.waits } }

    /// Returns when a start may go to `partition` (of `partitions`); throws `unavailable` when it waited
    /// `maxWait` and the coordinators are still too far behind.
    func admit(partition: Int32, of partitions: Int) async throws {
        guard settings.maxDelay != nil else { return }
        // The first start of a client goes without a reading: one reading cannot tell a rate, and a one-off start
        // (`baton start`) should not pay for a consumer of the coordinators' group.
        guard state.withLock({ s in defer { s.asked = true }; return s.asked }) else { return }
        let began = ContinuousClock.now
        while true {
            await readIfDue(partitions: partitions)
            // While the lag cannot be read, starts are not held (the start itself then meets the brokers' state).
            let now = ContinuousClock.now
            // A start goes now (admit), after its turn (pace), or waits and asks again.
            let (verdict, turn) = state.withLock { s -> (PartitionLoad.Verdict, Duration?) in
                let verdict = s.failing ? .admit : s.loads[partition]?.verdict(maxDelay: settings.maxDelay, window: settings.window) ?? .admit
                let turn: Duration? =
                    switch verdict {
                    case .admit: .zero
                    case .pace(let rate): s.paces[partition, default: StartPace(next: now)].take(rate: rate, horizon: settings.interval, now: now)
                    case .hold: nil
                    }
                if verdict == .admit { s.paces[partition] = nil }
                if let turn {
                    s.admitted[partition, default: 0] += 1
                    let waited = now + turn - began
                    if waited > settings.interval / 2 { s.waits.record(waited) }
                }
                return (verdict, turn)
            }
            if let turn {
                if turn > .zero { try await Task.sleep(for: turn) }
                return
            }
            let waited = now - began
            if waited >= settings.maxWait {
                state.withLock { $0.waits.refused += 1 }
                let why =
                    switch verdict {
                    case .hold(let lag, let behind):
                        "the coordinators are \(lag) events (about \(behind.inMilliseconds / 1000) s) behind on \(names.events) partition \(partition), more than the \(settings.maxDelay.map { "\($0.inMilliseconds) ms" } ?? "") a start waits for (BATON_START_MAX_DELAY)"
                    case .pace(let rate):
                        "starts to \(names.events) partition \(partition) go at \(Int(rate.rounded(.up))) a second, what the coordinators get through, and more are waiting"
                    case .admit: "starts are waiting"
                    }
                throw ClientError(
                    .unavailable, "the engine is busy: \(why); this start waited \(waited.inMilliseconds / 1000) s and was not sent: send it again later",
                    retryAfter: { if case .hold(_, let behind) = verdict { max(.seconds(1), behind) } else { .seconds(1) } }())
            }
            // Waiting for the lag to come down, or for a turn within reach: the next reading is due after `interval`.
            try await Task.sleep(for: settings.interval)
        }
    }

    /// Reads the lag of every partition when the last reading is older than `interval` and no other start is
    /// reading it now. A failed reading is logged (once per episode) and the last one kept: the start itself then
    /// meets the brokers' state.
    func readIfDue(partitions: Int) async {
        let now = ContinuousClock.now
        let due = state.withLock { s -> Bool in
            guard !s.reading, s.lastRead.map({ now - $0 >= settings.interval }) ?? true else { return false }
            s.reading = true
            return true
        }
        guard due else { return }
        do {
            let consumer = try state.withLock { s -> KafkaConsumer in
                if let c = s.consumer { return c }
                // A consumer of the coordinators' group that never subscribes: it reads the group's offsets
                // without joining it.
                let c = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client, groupID: names.coordinatorGroup), logger: logger)
                s.consumer = c
                return c
            }
            let tps = (0..<Int32(partitions)).map { TopicPartition(names.events, $0) }
            async let committed = consumer.committed(tps, timeout: .seconds(5))
            let marks = try await consumer.watermarks(tps)
            let offsets = Dictionary(try await committed.map { ($0.topicPartition.partition, $0.offset) }) { a, _ in a }
            let at = ContinuousClock.now
            state.withLock { s in
                for tp in tps {
                    guard let mark = marks[tp] else { continue }
                    let committed = offsets[tp.partition].flatMap { $0 >= 0 ? $0 : nil } ?? mark.low
                    s.loads[tp.partition, default: PartitionLoad()].add(
                        .init(at: at, committed: committed, end: mark.high, admitted: s.admitted[tp.partition] ?? 0), window: settings.window)
                }
                if s.failing { logger.notice("reading the coordinators' lag works again") }
                s.failing = false
                s.lastRead = at
                s.reading = false
            }
        } catch {
            let first = state.withLock { s -> Bool in
                defer { s.failing = true }
                s.reading = false
                s.lastRead = .now
                return !s.failing
            }
            if first { logger.warning("cannot read the coordinators' lag; starts are not held meanwhile: \(error)") }
        }
    }

    func close() async {
        if let consumer = state.withLock({ $0.consumer }) { await consumer.close() }
    }
}

/// How often starts waited for the coordinators, and for how long.
public struct StartWaits: Sendable {
    public var count = 0
    public var total: Duration = .zero
    public var longest: Duration = .zero
    /// Starts refused after waiting `maxWait`.
    public var refused = 0

    mutating func record(_ waited: Duration) {
        count += 1
        total += waited
        longest = max(longest, waited)
    }
}

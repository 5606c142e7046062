/// How far this process's clock is from the clocks of the processes whose records it reads: a coordinator fires
/// timers by its own clock, and a clock that jumped hours ahead would fire every timer early.
///
/// A sample is `offset = this clock − the record's timestamp` for a record read as soon as it was written (at the
/// end of its partition when fetched): the writer's clock when it wrote it, plus the delivery's latency. Latency
/// only adds, so the smallest offset in a window is the tightest estimate: if this clock is `d` ahead of a writer's,
/// every offset is at least `d`; if it is `d` behind, the freshest record shows about `−d`. Records written long
/// before they were read (a consumer catching up) are not samples: callers pass only those read at the end of
/// their partition. With several writers, the estimate is against the one whose clock is furthest ahead.
///
/// The verdict changes only on evidence: a window with no samples (a quiet system) keeps the last one, so a clock
/// that jumped ahead keeps its timers held until records show the clocks agree again.
public struct ClockSkew: Sendable {
    public enum Verdict: Sendable, Hashable, CustomStringConvertible {
        /// Not enough samples yet.
        case unknown
        /// Within the limit; the estimate (positive: this clock is ahead).
        case agrees(offset: Int64)
        /// This clock is ahead of the others' by about this many milliseconds.
        case ahead(Int64)
        /// This clock is behind the others' by about this many milliseconds.
        case behind(Int64)

        public var description: String {
            switch self {
            case .unknown: "unknown"
            case .agrees(let offset): "within the limit (\(offset) ms)"
            case .ahead(let ms): "\(Self.text(ms)) ahead of the clocks of the processes whose records it reads"
            case .behind(let ms): "\(Self.text(ms)) behind the clocks of the processes whose records it reads"
            }
        }

        static func text(_ ms: Int64) -> String { ms >= 120_000 ? "\(ms / 60_000) min" : "\(ms / 1000) s" }

        /// Timers may not fire: this clock would fire them early.
        public var holdsTimers: Bool { if case .ahead = self { true } else { false } }
        public var offset: Int64? {
            switch self {
            case .unknown: nil
            case .agrees(let o): o
            case .ahead(let ms): ms
            case .behind(let ms): -ms
            }
        }
    }

    /// Beyond this offset either way the clocks disagree.
    public var limit: Int64
    /// How long a sample counts, in milliseconds of a monotonic clock.
    public var window: Int64
    public private(set) var verdict = Verdict.unknown
    /// The smallest offset of each second that had samples, oldest first.
    private var seconds: [(second: Int64, offset: Int64)] = []

    public init(limit: Millis = .seconds(30), window: Millis = .seconds(60)) {
        self.limit = limit.value
        self.window = window.value
    }

    /// Records a sample taken at `monotonic` milliseconds; the verdict when it changed, else nil.
    public mutating func observe(offset: Int64, at monotonic: Int64) -> Verdict? {
        let second = monotonic / 1000
        if let last = seconds.last, last.second == second {
            seconds[seconds.count - 1].offset = min(last.offset, offset)
        } else {
            seconds.append((second, offset))
        }
        let oldest = (monotonic - window) / 1000
        if let stale = seconds.firstIndex(where: { $0.second > oldest }), stale > 0 { seconds.removeFirst(stale) }
        return decide()
    }

    /// This clock jumped by `ms` (forward: positive), as its process saw against a monotonic clock: the samples
    /// taken before were measured against the old time, and are that much larger now. A clock that jumps two
    /// hours ahead is known to be ahead at once, without waiting for records.
    public mutating func clockJumped(by ms: Int64) -> Verdict? {
        guard !seconds.isEmpty else { return nil }
        for i in seconds.indices { seconds[i].offset += ms }
        return decide()
    }

    private mutating func decide() -> Verdict? {
        guard let estimate = seconds.map(\.offset).min() else { return nil }
        let next: Verdict = estimate > limit ? .ahead(estimate) : estimate < -limit ? .behind(-estimate) : .agrees(offset: estimate)
        let changed = !Self.sameKind(next, verdict)
        verdict = next
        return changed ? next : nil
    }

    static func sameKind(_ a: Verdict, _ b: Verdict) -> Bool {
        switch (a, b) {
        case (.unknown, .unknown), (.agrees, .agrees), (.ahead, .ahead), (.behind, .behind): true
        default: false
        }
    }
}

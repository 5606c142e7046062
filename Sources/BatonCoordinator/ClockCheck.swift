import BatonCore
import BatonKafka
import BatonWire
import CoreMetrics
import Foundation
import Logging
import Synchronization

/// The coordinator's clock against clocks it does not own: the timestamps (CreateTime) of records other
/// processes wrote, read at the end of their partition (`ClockSkew`), and its own wall clock against its monotonic
/// one (a jump of the wall clock shows at once). While this clock runs ahead by more than the limit, timers do not
/// fire (they would fire early), the coordinator is not ready, and a critical line says why; they fire again when
/// the clocks agree. A clock behind the others is reported the same way, and timers keep firing: late, each once.
///
/// At start-up, timers wait up to `evidenceWait` for a first sample; a namespace with no traffic at all gives none,
/// and then they fire by this clock (a clock wrong from the start on a silent namespace cannot be seen).
final class ClockCheck: Sendable {
    struct State {
        var skew: ClockSkew
        var lastWall: Timestamp
        var lastMonotonic: ContinuousClock.Instant
        let started = ContinuousClock.now
    }
    private let state: Mutex<State>
    let evidenceWait: Duration
    let logger: Logger
    let offsetGauge: Gauge
    let heldGauge: Gauge

    init(limit: Millis, evidenceWait: Duration = .seconds(5), now: Timestamp, logger: Logger, factory: any MetricsFactory) {
        state = Mutex(State(skew: ClockSkew(limit: limit), lastWall: now, lastMonotonic: .now))
        self.evidenceWait = evidenceWait
        self.logger = logger
        offsetGauge = Gauge(label: "baton_coordinator_clock_offset_seconds", dimensions: [], factory: factory)
        heldGauge = Gauge(label: "baton_coordinator_clock_timers_held", dimensions: [], factory: factory)
        heldGauge.record(0)
    }

    /// Kinds of events coordinators write themselves: their timestamps are a coordinator's clock, maybe this one's.
    static let ownKinds: Set<String> = [Wire.Kind.timerFired.rawValue, Wire.Kind.eventReturned.rawValue]

    /// A record read at the end of its partition, written at `written` by its producer's clock.
    func sample(_ m: KafkaMessage, now: Timestamp) {
        guard let written = m.timestamp else { return }
        if let kind = m.header(WireHeaders.kind), Self.ownKinds.contains(String(decoding: kind, as: UTF8.self)) { return }
        let change = state.withLock { s in
            s.skew.observe(offset: now - written, at: Int64((ContinuousClock.now - s.started).inMilliseconds))
        }
        report(change)
    }

    /// Called on each poll: a wall clock that moved more or less than the monotonic one since the last call jumped.
    func tick(now: Timestamp) {
        let change = state.withLock { s -> ClockSkew.Verdict?? in
            let elapsed = Int64((ContinuousClock.now - s.lastMonotonic).inMilliseconds)
            let jump = (now - s.lastWall) - elapsed
            s.lastWall = now
            s.lastMonotonic = .now
            guard abs(jump) >= 1000 else { return .none }
            logger.warning("this process's clock jumped by \(jump) ms", metadata: ["clock": "\(now)"])
            return .some(s.skew.clockJumped(by: jump))
        }
        if case .some(let verdict) = change { report(verdict) }
    }

    /// Whether timers may fire now.
    var mayFireTimers: Bool {
        state.withLock { s in
            if s.skew.verdict.holdsTimers { return false }
            if s.skew.verdict == .unknown { return ContinuousClock.now - s.started >= evidenceWait }
            return true
        }
    }

    var holdsTimers: Bool { state.withLock { $0.skew.verdict.holdsTimers } }
    var verdict: ClockSkew.Verdict { state.withLock { $0.skew.verdict } }

    private func report(_ change: ClockSkew.Verdict?) {
        let verdict = self.verdict
        if let offset = verdict.offset { offsetGauge.record(Double(offset) / 1000) }
        heldGauge.record(verdict.holdsTimers ? 1 : 0)
        guard let change else { return }
        switch change {
        case .ahead:
            logger.critical("this coordinator's clock is \(change); timers are held (they would fire early) and it reports not ready until the clocks agree: check NTP on this host (docs/operations.md#clocks)")
        case .behind:
            logger.critical("this coordinator's clock is \(change); timers fire late by as much until the clocks agree: check NTP on this host (docs/operations.md#clocks)")
        case .agrees(let offset):
            logger.notice("this coordinator's clock agrees with the others' again (offset \(offset) ms); timers fire when due")
        case .unknown:
            break
        }
    }
}

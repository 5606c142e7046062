import Testing

@testable import BatonClient

/// When a start waits for the coordinators: the lag over the rate at which they commit, and never when no
/// coordinator works on the partition.
@Suite struct StartAdmissionTests {
    let t0 = ContinuousClock.now
    let window = Duration.seconds(10)

    func load(_ samples: [(Double, Int64, Int64)]) -> PartitionLoad {
        var load = PartitionLoad()
        for (at, committed, end) in samples {
            load.add(.init(at: t0 + .milliseconds(Int64(at * 1000)), committed: committed, end: end), window: window)
        }
        return load
    }

    @Test func aPartitionFurtherBehindThanTheLimitHoldsStarts() {
        // 1,000 committed per second, 5,000 behind: 5 s.
        let l = load([(0, 0, 3000), (1, 1000, 5000), (2, 2000, 7000)])
        #expect(l.verdict(maxDelay: .seconds(2), window: window) == .hold(lag: 5000, behind: .seconds(5)))
        #expect(l.verdict(maxDelay: .seconds(6), window: window) == .admit)
        #expect(l.verdict(maxDelay: nil, window: window) == .admit)
    }

    @Test func aPartitionCaughtUpAdmits() {
        let l = load([(0, 0, 100), (1, 900, 900), (2, 1500, 1500)])
        #expect(l.verdict(maxDelay: .seconds(1), window: window) == .admit)
    }

    @Test func noCoordinatorMovingMeansStartsQueueAsInAnOutage() {
        // Nothing committed over the window: all coordinators down, or none started yet.
        let l = load([(0, 500, 9000), (5, 500, 20_000), (11, 500, 30_000)])
        #expect(l.verdict(maxDelay: .seconds(1), window: window) == .admit)
        // A committed offset that went back (the partition was reset): not a rate either.
        #expect(load([(0, 500, 9000), (2, 100, 9000)]).verdict(maxDelay: .seconds(1), window: window) == .admit)
    }

    @Test func oneReadingOrLessThanASecondOfThemSaysNothingYet() {
        #expect(load([(0, 0, 50_000)]).verdict(maxDelay: .seconds(1), window: window) == .admit)
        #expect(load([(0, 0, 50_000), (0.5, 10, 50_000)]).verdict(maxDelay: .seconds(1), window: window) == .admit)
    }

    @Test func theRateIsTakenOverTheWindowOnly() {
        // Fast long ago, slow within the last 10 s: the slow rate counts.
        let l = load([(0, 0, 100_000), (20, 90_000, 100_000), (25, 90_050, 100_000), (30, 90_100, 100_000)])
        #expect(l.samples.count <= 4)
        guard case .hold(let lag, let behind) = l.verdict(maxDelay: .seconds(2), window: window) else {
            Issue.record("expected the starts held")
            return
        }
        #expect(lag == 9_900)
        // 100 committed over the last 10 s: 10 per second.
        #expect(behind == .seconds(990))
    }

    /// Readings with how many starts this client had let through: (seconds, committed, end, admitted).
    func load(admitted samples: [(Double, Int64, Int64, Int64)]) -> PartitionLoad {
        var load = PartitionLoad()
        for (at, committed, end, admitted) in samples {
            load.add(.init(at: t0 + .milliseconds(Int64(at * 1000)), committed: committed, end: end, admitted: admitted), window: window)
        }
        return load
    }

    @Test func betweenHalfTheLimitAndTheLimitStartsGoAtWhatTheCoordinatorsGetThrough() {
        // 1,500 records committed a second; each of the 500 starts let through brought 8 records (4,000 over 2 s):
        // the coordinators get through 187.5 starts a second. 1,500 behind: 1 s.
        let l = load(admitted: [(0, 0, 500, 0), (1, 1500, 2500, 250), (2, 3000, 4500, 500)])
        #expect(l.recordsPerStart == 8)
        func pace(_ limit: Duration) -> Double? {
            if case .pace(let rate) = l.verdict(maxDelay: limit, window: window) { rate } else { nil }
        }
        // Right at the limit: as fast as they get through; at 80% of it, a little faster (the queue drains less).
        #expect(pace(.seconds(1)).map { abs($0 - 187.5) < 0.001 } == true)
        #expect(pace(.milliseconds(1250)).map { abs($0 - 187.5 * 1.2) < 0.001 } == true)
        // At half the limit or less, no pace at all; past the limit, held.
        #expect(l.verdict(maxDelay: .seconds(2), window: window) == .admit)
        #expect(l.verdict(maxDelay: .milliseconds(500), window: window) == .hold(lag: 1500, behind: .seconds(1)))
    }

    @Test func withoutEnoughStartsToTellWhatEachBringsNothingIsPaced() {
        let l = load(admitted: [(0, 0, 500, 0), (1, 1000, 2500, 5), (2, 2000, 3500, 10)])
        #expect(l.recordsPerStart == nil)
        #expect(l.verdict(maxDelay: .seconds(2), window: window) == .admit)
    }

    @Test func pacedStartsTakeTurnsWithinReachAndTheRestAskAgain() {
        var pace = StartPace(next: t0)
        // 10 a second, turns within half a second taken: now, +100 ms, ... +500 ms; the seventh is out of reach.
        let turns = (0..<7).map { _ in pace.take(rate: 10, horizon: .milliseconds(500), now: t0) }
        #expect(turns == [.zero, .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(400), .milliseconds(500), nil])
        // Nothing is saved up while no start asked: after a minute idle, one goes now and the next waits its turn.
        let later = t0 + .seconds(60)
        #expect(pace.take(rate: 10, horizon: .milliseconds(500), now: later) == .zero)
        #expect(pace.take(rate: 10, horizon: .milliseconds(500), now: later) == .milliseconds(100))
    }

    @Test func settingsComeFromTheEnvironmentOrSayWhatIsWrong() throws {
        #expect(try StartAdmissionSettings.fromEnvironment([:]) == StartAdmissionSettings())
        #expect(try StartAdmissionSettings.fromEnvironment(["BATON_START_MAX_DELAY": "0"]).maxDelay == nil)
        #expect(try StartAdmissionSettings.fromEnvironment(["BATON_START_MAX_DELAY": "5s", "BATON_START_MAX_WAIT": "1m"]) == StartAdmissionSettings(maxDelay: .seconds(5), maxWait: .seconds(60)))
        #expect {
            try StartAdmissionSettings.fromEnvironment(["BATON_START_MAX_DELAY": "fast"])
        } throws: { "\($0)".contains("BATON_START_MAX_DELAY") && "\($0)".contains("'fast'") }
        #expect {
            try StartAdmissionSettings.fromEnvironment(["BATON_START_MAX_WAIT": "10ms"])
        } throws: { "\($0)".contains("BATON_START_MAX_WAIT") }
    }
}

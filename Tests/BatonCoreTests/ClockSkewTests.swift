import BatonCore
import Testing

@Suite("Clock skew: this clock against the clocks of the records it reads")
struct ClockSkewTests {
    @Test func offsetsWithinTheLimitAgreeAndLatencyDoesNotCountAgainstTheClock() {
        var skew = ClockSkew(limit: .seconds(30))
        #expect(skew.observe(offset: 40_000, at: 0) == .ahead(40_000))  // read late: only an upper bound
        // A fresher record shows the clocks agree: the smallest offset in the window wins.
        #expect(skew.observe(offset: 12, at: 500) == .agrees(offset: 12))
        #expect(skew.observe(offset: 50_000, at: 1_500) == nil)
        #expect(!skew.verdict.holdsTimers)
    }

    @Test func aClockTwoHoursAheadHoldsTimersUntilTheClocksAgreeAgain() {
        var skew = ClockSkew(limit: .seconds(30), window: .seconds(60))
        #expect(skew.observe(offset: 7_200_000 + 15, at: 10_000) == .ahead(7_200_015))
        #expect(skew.verdict.holdsTimers)
        #expect("\(skew.verdict)".contains("120 min ahead"))
        // Quiet for a long time: no evidence, so the verdict stands.
        #expect(skew.verdict.holdsTimers)
        #expect(skew.observe(offset: 7_200_000, at: 40_000) == nil)
        // The clock is put right: one record read fresh shows it (no clock 2 h ahead can see a 20 ms offset).
        #expect(skew.observe(offset: 20, at: 71_000) == .agrees(offset: 20))
        #expect(!skew.verdict.holdsTimers)
        // A clock that jumps ahead again is seen once the agreeing samples have left the window.
        #expect(skew.observe(offset: 7_200_000, at: 100_000) == nil, "the 20 ms offset of second 71 is still in the window")
        #expect(skew.observe(offset: 7_200_000, at: 132_000) == .ahead(7_200_000))
    }

    @Test func aClockAnHourBehindIsReportedButDoesNotHoldTimers() {
        var skew = ClockSkew(limit: .seconds(30))
        #expect(skew.observe(offset: -3_600_000 + 8, at: 0) == .behind(3_599_992))
        #expect(!skew.verdict.holdsTimers)
        #expect(skew.verdict.offset == -3_599_992)
    }

    @Test func aJumpOfTheClockShiftsWhatWasSeenBeforeSoAJumpAheadHoldsTimersAtOnce() {
        var skew = ClockSkew(limit: .seconds(30))
        #expect(skew.observe(offset: 15, at: 0) == .agrees(offset: 15))
        #expect(skew.clockJumped(by: 7_200_000) == .ahead(7_200_015))
        #expect(skew.verdict.holdsTimers)
        #expect(skew.clockJumped(by: -7_200_000) == .agrees(offset: 15))
    }

    @Test func noSamplesLeaveTheVerdictUnknown() {
        let skew = ClockSkew()
        #expect(skew.verdict == .unknown)
        #expect(!skew.verdict.holdsTimers)
    }
}

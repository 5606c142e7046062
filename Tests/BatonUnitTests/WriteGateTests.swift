@testable import BatonCoordinator
import Testing

/// The coordinator's gate on writes after a freeze. Times are real but far apart: holds a minute or more ahead,
/// polls and freezes minutes back, so that no test depends on how fast it runs.
@Suite("WriteGate: no writes after a freeze")
struct WriteGateTests {
    static let limit: Duration = .seconds(60)

    /// The number of milliseconds in a `Stalled` description ("… for 120000 ms", "… held for 59999 ms more").
    func milliseconds(_ error: WriteGate.Stalled?) throws -> Int64 {
        let description = try #require(error).description
        let digits = try #require(description.split(separator: " ").first { Int64($0) != nil }, "no number in \"\(description)\"")
        return try #require(Int64(digits))
    }

    @Test func aNewGateIsOpenAndMayWrite() throws {
        let gate = WriteGate()
        #expect(gate.openAt == nil)
        #expect(gate.mayWrite(polledWithin: Self.limit))
        try gate.check(since: .now, limit: Self.limit)
    }

    @Test func aHoldInTheFutureClosesTheGateUntilThen() {
        let gate = WriteGate()
        let until = ContinuousClock.now + .seconds(60)
        gate.hold(until: until)
        #expect(gate.openAt == until)
        gate.polled(at: .now)
        #expect(!gate.mayWrite(polledWithin: Self.limit))
    }

    @Test func aHoldThatHasPassedLeavesTheGateOpen() throws {
        let gate = WriteGate()
        gate.hold(until: .now - .seconds(60))
        #expect(gate.openAt == nil)
        #expect(gate.mayWrite(polledWithin: Self.limit))
        try gate.check(since: .now, limit: Self.limit)
    }

    @Test func theLaterOfTwoHoldsCounts() {
        let gate = WriteGate()
        let near = ContinuousClock.now + .seconds(60)
        let far = near + .seconds(60)
        gate.hold(until: far)
        gate.hold(until: near)
        #expect(gate.openAt == far)
        let farther = far + .seconds(60)
        gate.hold(until: farther)
        #expect(gate.openAt == farther)
    }

    @Test func aWriteMayGoOutOnlyWhileTheLastPollIsRecentEnough() {
        let gate = WriteGate()
        gate.polled(at: .now - .seconds(120))
        #expect(!gate.mayWrite(polledWithin: Self.limit))
        #expect(gate.mayWrite(polledWithin: .seconds(600)))
        gate.polled(at: .now)
        #expect(gate.mayWrite(polledWithin: Self.limit))
        // Polling does not open a held gate.
        gate.hold(until: .now + .seconds(60))
        gate.polled(at: .now)
        #expect(!gate.mayWrite(polledWithin: Self.limit))
    }

    @Test func aHeldGateRefusesACallerThatWasNotFrozenAndKeepsItsHold() throws {
        let gate = WriteGate()
        let until = ContinuousClock.now + .seconds(60)
        gate.hold(until: until)
        let error = #expect(throws: WriteGate.Stalled.self) { try gate.check(since: .now, limit: Self.limit) }
        #expect(try (50_000...60_000).contains(milliseconds(error)))
        #expect(error?.description.contains("held") == true)
        #expect(gate.openAt == until)
    }

    @Test func aCallerFrozenLongerThanTheLimitIsRefusedAndHoldsTheGateForTheLimit() throws {
        let gate = WriteGate()
        let before = ContinuousClock.now
        let error = #expect(throws: WriteGate.Stalled.self) { try gate.check(since: before - .seconds(120), limit: Self.limit) }
        let after = ContinuousClock.now
        // It says how long the caller was stalled.
        #expect(try (120_000..<180_000).contains(milliseconds(error)))
        let openAt = try #require(gate.openAt)
        #expect(openAt >= before + Self.limit && openAt <= after + Self.limit)
        // Held: timers may not fire, and the next caller is refused, frozen or not.
        gate.polled(at: .now)
        #expect(!gate.mayWrite(polledWithin: Self.limit))
        #expect(throws: WriteGate.Stalled.self) { try gate.check(since: .now, limit: Self.limit) }
    }

    @Test func aFreezeDoesNotShortenALongerHold() {
        let gate = WriteGate()
        let until = ContinuousClock.now + .seconds(600)
        gate.hold(until: until)
        #expect(throws: WriteGate.Stalled.self) { try gate.check(since: .now - .seconds(120), limit: Self.limit) }
        #expect(gate.openAt == until)
    }

    @Test func aCallerWithinTheLimitOnAnOpenGateMayWrite() throws {
        let gate = WriteGate()
        try gate.check(since: .now - .seconds(30), limit: Self.limit)
        #expect(gate.openAt == nil)
        #expect(gate.mayWrite(polledWithin: Self.limit))
    }
}

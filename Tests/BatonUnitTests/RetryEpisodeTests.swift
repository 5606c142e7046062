import BatonRuntime
import Synchronization
import Testing

/// A clock that moves only when the test moves it (sleeping moves it to the deadline at once).
struct ManualClock: Clock {
    struct Instant: InstantProtocol {
        var offset: Duration

        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    private final class Time: Sendable {
        let now = Mutex(Instant(offset: .zero))
    }
    private let time = Time()

    var now: Instant { time.now.withLock { $0 } }
    var minimumResolution: Duration { .zero }

    func advance(by duration: Duration) {
        time.now.withLock { $0 = $0.advanced(by: duration) }
    }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        try Task.checkCancellation()
        time.now.withLock { $0 = Swift.max($0, deadline) }
    }
}

@Suite("Backoff: the wait after failures in a row")
struct BackoffTests {
    @Test func theWaitDoublesFromTheFirstUpToTheMost() {
        let backoff = Backoff(first: .milliseconds(100), max: .seconds(1))
        #expect((1...7).map { backoff.delay(afterFailures: $0) } == [100, 200, 400, 800, 1000, 1000, 1000].map { .milliseconds($0) })
    }

    @Test func theFirstWaitIsATenthOfASecondUnlessSaidOtherwise() {
        #expect(Backoff(max: .seconds(5)).first == .milliseconds(100))
        #expect(Backoff(max: .seconds(5)).delay(afterFailures: 1) == .milliseconds(100))
    }

    @Test func noFailuresYetWaitsTheFirst() {
        let backoff = Backoff(first: .milliseconds(100), max: .seconds(1))
        #expect(backoff.delay(afterFailures: 0) == .milliseconds(100))
    }

    @Test func aHugeNumberOfFailuresWaitsTheMostWithoutOverflowing() {
        let backoff = Backoff(first: .milliseconds(100), max: .seconds(30))
        for failures in [17, 63, 64, 65, 1_000_000, Int.max] {
            #expect(backoff.delay(afterFailures: failures) == .seconds(30), "after \(failures) failures")
        }
    }
}

@Suite("RetryEpisode: failures in a row, alerts and retakes")
struct RetryEpisodeTests {
    let clock = ManualClock()

    func episode(alertAfterFailures: Int = 3, alertAfter: Duration = .seconds(30), retakeAfterFailures: Int? = nil) -> RetryEpisode<ManualClock> {
        RetryEpisode(
            policy: RetryPolicy(
                backoff: Backoff(first: .milliseconds(100), max: .seconds(1)), alertAfterFailures: alertAfterFailures, alertAfter: alertAfter,
                retakeAfterFailures: retakeAfterFailures),
            clock: clock)
    }

    @Test func eachFailureCountsAndWaitsLongerAsTheBackoffSays() {
        var episode = episode()
        let failures = (1...5).map { _ in episode.failed() }
        #expect(failures.map(\.count) == [1, 2, 3, 4, 5])
        #expect(failures.map(\.delay) == [100, 200, 400, 800, 1000].map { .milliseconds($0) })
        #expect(episode.failures == 5)
    }

    @Test func anAlertIsDueAfterAlertAfterFailuresFailures() {
        var episode = episode(alertAfterFailures: 3)
        #expect((1...3).map { _ in episode.failed().alert } == [false, false, true])
    }

    @Test func anAlertIsDueEarlierOnceTheFailuresWentOnForAlertAfter() {
        var episode = episode(alertAfterFailures: 100, alertAfter: .seconds(30))
        let first = episode.failed()
        #expect(!first.alert)
        #expect(first.failingFor == .zero)
        clock.advance(by: .seconds(29))
        #expect(!episode.failed().alert)
        clock.advance(by: .seconds(1))
        let third = episode.failed()
        #expect(third.failingFor == .seconds(30))
        #expect(third.alert)
    }

    @Test func anAlertIsAskedForAgainUntilItWasDelivered() {
        var episode = episode(alertAfterFailures: 2)
        #expect(!episode.failed().alert)
        #expect(episode.failed().alert)
        episode.alertDelivered(false)
        #expect(episode.failed().alert)
        episode.alertDelivered(true)
        #expect(episode.alerted)
        #expect(!episode.failed().alert)
        // A later failed delivery does not undo the one that reached the on-call.
        episode.alertDelivered(false)
        #expect(episode.alerted)
        #expect(!episode.failed().alert)
    }

    @Test func aRetakeIsDueEveryRetakeAfterFailuresFailures() {
        var episode = episode(alertAfterFailures: 100, retakeAfterFailures: 3)
        #expect((1...7).map { _ in episode.failed().retake } == [false, false, true, false, false, true, false])
    }

    @Test func noRetakeIsDueWithoutRetakeAfterFailures() {
        var episode = episode(alertAfterFailures: 100)
        #expect((1...20).allSatisfy { _ in !episode.failed().retake })
    }

    @Test func successWithoutFailuresEndsNoEpisode() {
        var episode = episode()
        #expect(episode.succeeded() == nil)
    }

    @Test func successAfterFailuresSaysHowManyHowLongAndWhetherTheOnCallWasAlerted() throws {
        var episode = episode(alertAfterFailures: 2)
        _ = episode.failed()
        clock.advance(by: .seconds(3))
        #expect(episode.failed().alert)
        episode.alertDelivered(true)
        clock.advance(by: .seconds(4))
        let succeeded = episode.succeeded()
        let ended = try #require(succeeded)
        #expect(ended.failures == 2)
        #expect(ended.lasted == .seconds(7))
        #expect(ended.alerted)
    }

    @Test func successStartsAnewSoTheNextFailureIsTheFirstOfAnotherEpisode() throws {
        var episode = episode(alertAfterFailures: 2)
        _ = episode.failed()
        #expect(episode.failed().alert)
        episode.alertDelivered(true)
        clock.advance(by: .seconds(5))
        #expect(episode.succeeded() != nil)
        #expect(episode.failures == 0)
        #expect(episode.since == nil)
        #expect(!episode.alerted)
        #expect(episode.succeeded() == nil)

        let next = episode.failed()
        #expect(next.count == 1)
        #expect(next.delay == .milliseconds(100))
        #expect(next.failingFor == .zero)
        #expect(!next.alert)
        #expect(episode.failed().alert, "a new episode alerts again")
        let succeeded = episode.succeeded()
        let ended = try #require(succeeded)
        #expect(ended.failures == 2)
        #expect(ended.lasted == .zero)
        #expect(!ended.alerted)
    }
}

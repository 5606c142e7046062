import BatonKafka
import BatonRuntime
import Logging
import Testing

/// `PartitionInbox` played from both sides by hand: the test is the poll loop (deliver, seek, stop) and the runner
/// (take, wait, finish). Waits are bounded: a wake that does not come fails the test within seconds.
@Suite("PartitionInbox: between a poll loop and a partition's runner", .timeLimit(.minutes(3)))
struct PartitionInboxTests {
    static let tp = TopicPartition("ns.events", 3)
    static let quiet = Logger(label: "baton.test.inbox") { _ in SwiftLogNoOpLogHandler() }

    func message(_ offset: Int64) -> KafkaMessage {
        KafkaMessage(topic: Self.tp.topic, partition: Self.tp.partition, offset: offset, key: nil, value: nil)
    }

    func inbox() -> PartitionInbox { PartitionInbox(Self.tp, logger: Self.quiet) }

    /// Offsets of the next batch taken without gap rereads.
    func take(_ inbox: PartitionInbox, max: Int) -> [Int64] {
        var gaps = GapGuard(enabled: false)
        return inbox.takeBatch(max: max, gaps: &gaps).map(\.offset)
    }

    // MARK: Records

    @Test func recordsAreTakenInOffsetOrderAtMostMaxAtATime() {
        let inbox = inbox()
        for offset in 0..<5 { inbox.deliver(message(Int64(offset))) }
        #expect(inbox.backlog == 5)
        #expect(take(inbox, max: 2) == [0, 1])
        #expect(take(inbox, max: 2) == [2, 3])
        #expect(inbox.backlog == 1)
        #expect(take(inbox, max: 2) == [4])
        #expect(take(inbox, max: 2) == [])
    }

    @Test func aRecordDeliveredWhileAResetIsPendingIsDropped() {
        let inbox = inbox()
        inbox.requestReset(to: 7)
        inbox.deliver(message(7))
        #expect(inbox.backlog == 0)
        #expect(take(inbox, max: 10) == [])
        // The poll loop sought: what it reads now comes from offset 7 and is kept.
        inbox.resetDone()
        inbox.deliver(message(7))
        #expect(take(inbox, max: 10) == [7])
    }

    @Test func aResetDropsWhatWasReadUntilThePollLoopHasSought() {
        let inbox = inbox()
        #expect(inbox.pendingReset == nil)
        for offset in 0..<3 { inbox.deliver(message(Int64(offset))) }
        inbox.requestReset(to: 1)
        #expect(inbox.pendingReset == 1)
        #expect(inbox.backlog == 0)
        #expect(take(inbox, max: 10) == [], "nothing is taken while a seek is pending")
        inbox.resetDone()
        #expect(inbox.pendingReset == nil)
        #expect(inbox.backlog == 0)
        inbox.deliver(message(1))
        #expect(inbox.backlog == 1)
    }

    @Test func aGapEndsTheBatchAndAsksThePollLoopToReadAgainFromItsFirstOffset() {
        let inbox = inbox()
        var gaps = GapGuard(enabled: true)
        for offset: Int64 in [0, 1, 2, 5, 6] { inbox.deliver(message(offset)) }
        #expect(inbox.takeBatch(max: 10, gaps: &gaps).map(\.offset) == [0, 1, 2])
        #expect(inbox.pendingReset == 3)
        #expect(inbox.backlog == 0, "what came after the gap is read again")
        inbox.deliver(message(7))
        #expect(inbox.takeBatch(max: 10, gaps: &gaps).isEmpty)
        // Read again from 3: the records the broker had not shown are there now.
        inbox.resetDone()
        for offset: Int64 in [3, 4, 5, 6, 7] { inbox.deliver(message(offset)) }
        #expect(inbox.takeBatch(max: 10, gaps: &gaps).map(\.offset) == [3, 4, 5, 6, 7])
        #expect(inbox.pendingReset == nil)
    }

    // MARK: Waiting for work

    @Test func stopWakesAWaitingRunner() async {
        let inbox = inbox()
        #expect(!inbox.isStopping)
        async let waited = ContinuousClock().measure { await inbox.waitForWork(atMost: .seconds(60)) }
        inbox.stop()
        #expect(await waited < .seconds(30))
        #expect(inbox.isStopping)
    }

    @Test func aRecordWakesAWaitThatWantsRecords() async {
        let inbox = inbox()
        async let waited = ContinuousClock().measure { await inbox.waitForWork(atMost: .seconds(60)) }
        inbox.deliver(message(0))
        #expect(await waited < .seconds(30))
    }

    @Test func aRecordDoesNotWakeAWaitThatBacksOff() async {
        let inbox = inbox()
        let wait = Duration.milliseconds(100)
        async let waited = ContinuousClock().measure { await inbox.waitForWork(atMost: wait, wakeOnMessages: false) }
        inbox.deliver(message(0))
        #expect(await waited >= wait)
        // A record already waiting ends a wait that wants records at once.
        let next = await ContinuousClock().measure { await inbox.waitForWork(atMost: .seconds(60)) }
        #expect(next < .seconds(30))
    }

    @Test func aCancelledTaskIsStoppingAndItsWaitEndsAtOnce() async {
        let inbox = inbox()
        let (stopping, waited) = await withTaskGroup(of: (Bool, Duration).self) { group in
            group.addTask {
                try? await Task.sleep(for: .seconds(60))  // ends when the task is cancelled
                let stopping = inbox.isStopping
                return (stopping, await ContinuousClock().measure { await inbox.waitForWork(atMost: .seconds(60)) })
            }
            group.cancelAll()
            return await group.next() ?? (false, .seconds(60))
        }
        #expect(stopping)
        #expect(waited < .seconds(30))
        #expect(!inbox.isStopping, "only the cancelled task sees it stopping: stop() was never called")
    }

    @Test func aWaitEndsWhenItsTaskIsCancelled() async {
        let inbox = inbox()
        let waited = await withTaskGroup(of: Duration.self) { group in
            group.addTask { await ContinuousClock().measure { await inbox.waitForWork(atMost: .seconds(60)) } }
            await Task.yield()  // let the wait begin (ending at once when it has not is fine too)
            group.cancelAll()
            return await group.next() ?? .seconds(60)
        }
        #expect(waited < .seconds(30))
    }

    // MARK: Finishing

    @Test func finishedReturnsOnceTheRunnerFinishedAndAtOnceAfterThat() async {
        let inbox = inbox()
        async let ended = inbox.finished(before: .now + .seconds(30))
        inbox.finish()
        #expect(await ended)
        await inbox.finished()
        #expect(await inbox.finished(before: .now + .seconds(30)))
    }

    @Test func finishedBeforeADeadlineIsFalseWhenTheRunnerNeverFinished() async {
        let inbox = inbox()
        let clock = ContinuousClock()
        let start = clock.now
        #expect(await !inbox.finished(before: start + .milliseconds(50)))
        #expect(clock.now - start >= .milliseconds(50))
    }

    @Test func aFinishedWaiterWhoseTaskIsCancelledReturns() async {
        let inbox = inbox()
        let waited = await withTaskGroup(of: Duration.self) { group in
            group.addTask { await ContinuousClock().measure { await inbox.finished() } }
            await Task.yield()
            group.cancelAll()
            return await group.next() ?? .seconds(60)
        }
        #expect(waited < .seconds(30))
        // The cancelled waiter is gone: finishing later resumes nobody twice.
        inbox.finish()
        #expect(await inbox.finished(before: .now + .seconds(30)))
    }

    @Test func finishedBeforeADeadlineIsFalseInACancelledTaskWhenTheRunnerNeverFinished() async {
        let inbox = inbox()
        let ended = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(for: .seconds(60))  // ends when the task is cancelled
                return await inbox.finished(before: .now + .seconds(30))
            }
            group.cancelAll()
            return await group.next() ?? false
        }
        #expect(!ended)
    }

    // MARK: The partition's end

    @Test func theEndIsTheLowestSeenUntilForgotten() {
        let inbox = inbox()
        #expect(!inbox.knowsEnd)
        #expect(inbox.end == nil)
        inbox.observeEnd(10)
        inbox.observeEnd(12)
        #expect(inbox.end == 10)
        // A partition EOF (read_committed) below the high watermark lowers it.
        inbox.observeEnd(8)
        #expect(inbox.end == 8)
        #expect(inbox.knowsEnd)
        inbox.forgetEnd()
        #expect(!inbox.knowsEnd)
        inbox.observeEnd(20)
        #expect(inbox.end == 20)
    }

    @Test func caughtUpOnceTheNextOffsetReachesTheEnd() {
        let inbox = inbox()
        #expect(!inbox.caughtUp(next: 100), "not before the end is known")
        inbox.observeEnd(5)
        #expect(!inbox.caughtUp(next: nil))
        #expect(!inbox.caughtUp(next: 4))
        #expect(inbox.caughtUp(next: 5))
        #expect(inbox.caughtUp(next: 6))
        // An empty partition: nothing committed is caught up.
        let empty = self.inbox()
        empty.observeEnd(0)
        #expect(empty.caughtUp(next: nil))
    }
}

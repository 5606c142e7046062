import BatonKafka
@testable import BatonWorker
import Testing

/// A worker's offsets as its commands start and finish out of order: what it may commit, and where the group
/// would resume.
@Suite("OffsetTracker: which offsets a worker may commit")
struct OffsetTrackerTests {
    static let p0 = TopicPartition("ns.commands.svc", 0)
    static let p1 = TopicPartition("ns.commands.svc", 1)
    static let other = TopicPartition("ns.commands.mail", 0)

    func message(_ offset: Int64, on tp: TopicPartition = p0) -> KafkaMessage {
        KafkaMessage(topic: tp.topic, partition: tp.partition, offset: offset, key: nil, value: nil)
    }

    /// What may be committed, by partition.
    func committable(
        _ tracker: OffsetTracker, of partitions: Set<TopicPartition>? = nil, past: [TopicPartition: Int64] = [:]
    ) -> [TopicPartition: Int64] {
        Dictionary(uniqueKeysWithValues: tracker.committable(of: partitions, past: past).map { ($0.topicPartition, $0.offset) })
    }

    @Test func nothingIsCommittableBeforeACommandStarts() {
        let tracker = OffsetTracker()
        #expect(committable(tracker).isEmpty)
        #expect(committable(tracker, past: [Self.p0: 10]).isEmpty)
    }

    @Test func whileCommandsRunOnlyWhatLiesBeforeTheOldestOfThemIsCommittable() {
        let tracker = OffsetTracker()
        for offset in Int64(5)...7 { tracker.started(message(offset)) }
        #expect(committable(tracker) == [Self.p0: 5])
        // The later ones finish first: the oldest still runs, so nothing moves.
        tracker.finished(message(7))
        tracker.finished(message(6))
        #expect(committable(tracker) == [Self.p0: 5])
        tracker.finished(message(5))
        #expect(committable(tracker) == [Self.p0: 8])
    }

    @Test func theOldestRunningCommandHoldsTheOffsetWhateverFinishedAroundIt() {
        let tracker = OffsetTracker()
        for offset in Int64(10)...14 { tracker.started(message(offset)) }
        tracker.finished(message(10))
        tracker.finished(message(11))
        tracker.finished(message(13))
        #expect(committable(tracker) == [Self.p0: 12])
        tracker.finished(message(12))
        #expect(committable(tracker) == [Self.p0: 14])
        tracker.finished(message(14))
        #expect(committable(tracker) == [Self.p0: 15])
    }

    @Test func anOffsetCommittedIsNotOfferedAgainOnlyALaterOne() {
        let tracker = OffsetTracker()
        tracker.started(message(0))
        tracker.started(message(1))
        tracker.finished(message(0))
        let first = tracker.committable(of: nil)
        #expect(first == [TopicPartitionOffset(Self.p0, offset: 1)])
        tracker.committed(first)
        #expect(committable(tracker).isEmpty)
        tracker.finished(message(1))
        #expect(committable(tracker) == [Self.p0: 2])
        tracker.committed([TopicPartitionOffset(Self.p0, offset: 2)])
        #expect(committable(tracker).isEmpty)
        // A command at the committed offset starts: what lies before it is committed already.
        tracker.started(message(2))
        #expect(committable(tracker).isEmpty)
    }

    @Test func partitionsAreTrackedEachOnItsOwn() {
        let tracker = OffsetTracker()
        tracker.started(message(3, on: Self.p0))
        tracker.started(message(4, on: Self.p0))
        tracker.started(message(20, on: Self.p1))
        tracker.started(message(7, on: Self.other))
        tracker.finished(message(4, on: Self.p0))
        tracker.finished(message(20, on: Self.p1))
        #expect(committable(tracker) == [Self.p0: 3, Self.p1: 21, Self.other: 7])
        tracker.committed([TopicPartitionOffset(Self.p1, offset: 21)])
        #expect(committable(tracker) == [Self.p0: 3, Self.other: 7])
    }

    @Test func onlyThePartitionsAskedForAreOffered() {
        let tracker = OffsetTracker()
        tracker.started(message(3, on: Self.p0))
        tracker.started(message(20, on: Self.p1))
        #expect(committable(tracker, of: [Self.p1]) == [Self.p1: 20])
        #expect(committable(tracker, of: []).isEmpty)
        #expect(committable(tracker, of: nil) == [Self.p0: 3, Self.p1: 20])
    }

    @Test func anIdlePartitionMayCommitUpToItsFetchPositionPastTheLastCommand() {
        let tracker = OffsetTracker()
        tracker.started(message(4))
        tracker.finished(message(4))
        // Transaction markers after offset 4: the consumer is at 7 with nothing more to run.
        #expect(committable(tracker, past: [Self.p0: 7]) == [Self.p0: 7])
        // A position behind what was run says nothing new.
        #expect(committable(tracker, past: [Self.p0: 2]) == [Self.p0: 5])
        // Another partition's position is not this one's.
        #expect(committable(tracker, past: [Self.p1: 9]) == [Self.p0: 5])
    }

    @Test func theFetchPositionDoesNotMoveAPartitionPastACommandStillRunning() {
        let tracker = OffsetTracker()
        tracker.started(message(4))
        tracker.started(message(5))
        tracker.finished(message(5))
        #expect(committable(tracker, past: [Self.p0: 9]) == [Self.p0: 4])
    }

    @Test func aPartitionIsIdleWhenNoCommandOfItRuns() {
        let tracker = OffsetTracker()
        #expect(tracker.isIdle(Self.p0))
        tracker.started(message(1))
        tracker.started(message(2))
        #expect(!tracker.isIdle(Self.p0))
        #expect(tracker.isIdle(Self.p1))
        tracker.finished(message(2))
        #expect(!tracker.isIdle(Self.p0))
        tracker.finished(message(1))
        #expect(tracker.isIdle(Self.p0))
    }

    @Test func theGroupResumesFromTheCommittedOffsetElseTheOldestRunningElseTheNext() {
        let tracker = OffsetTracker()
        let all: Set = [Self.p0, Self.p1, Self.other]
        tracker.started(message(3, on: Self.p0))
        tracker.started(message(4, on: Self.p0))
        tracker.started(message(8, on: Self.p1))
        tracker.finished(message(8, on: Self.p1))
        func positions() -> [TopicPartition: Int64] { Dictionary(uniqueKeysWithValues: tracker.positions(of: all)) }
        // Nothing committed: p0 from its oldest running command, p1 from after what it ran, `other` unknown.
        #expect(positions() == [Self.p0: 3, Self.p1: 9])
        tracker.committed([TopicPartitionOffset(Self.p0, offset: 3), TopicPartitionOffset(Self.p1, offset: 9)])
        tracker.finished(message(3, on: Self.p0))
        tracker.finished(message(4, on: Self.p0))
        // Committed offsets are where the group resumes until the next commit, however far the commands got.
        #expect(positions() == [Self.p0: 3, Self.p1: 9])
    }

    @Test func forgottenPartitionsStartAfreshAndTheOthersDoNot() {
        let tracker = OffsetTracker()
        tracker.started(message(10, on: Self.p0))
        tracker.started(message(30, on: Self.p1))
        tracker.finished(message(30, on: Self.p1))
        tracker.committed([TopicPartitionOffset(Self.p0, offset: 10), TopicPartitionOffset(Self.p1, offset: 31)])
        tracker.forget([Self.p0])
        #expect(tracker.isIdle(Self.p0))
        #expect(tracker.positions(of: [Self.p0]).isEmpty)
        // The command at 10 finishing after its partition was revoked offers nothing.
        tracker.finished(message(10, on: Self.p0))
        #expect(committable(tracker).isEmpty)
        // Taken again and read from an earlier offset: that offset is committable, below what was committed before.
        tracker.started(message(2, on: Self.p0))
        tracker.finished(message(2, on: Self.p0))
        #expect(committable(tracker) == [Self.p0: 3])
        #expect(tracker.positions(of: [Self.p1]).map(\.1) == [31])
    }

    @Test func commandsStartedAndFinishedConcurrentlyLeaveEverythingCommittable() async {
        let tracker = OffsetTracker()
        let offsets = Int64(0)..<400
        for offset in offsets { tracker.started(message(offset, on: offset.isMultiple(of: 2) ? Self.p0 : Self.p1)) }
        await withTaskGroup(of: Void.self) { group in
            for offset in offsets.shuffled() {
                let m = message(offset, on: offset.isMultiple(of: 2) ? Self.p0 : Self.p1)
                group.addTask { tracker.finished(m) }
            }
        }
        #expect(tracker.isIdle(Self.p0))
        #expect(tracker.isIdle(Self.p1))
        #expect(committable(tracker) == [Self.p0: 399, Self.p1: 400])
    }
}

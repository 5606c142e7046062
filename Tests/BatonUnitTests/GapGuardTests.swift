import BatonKafka
import BatonRuntime
import Testing

/// `GapGuard` fed offsets by hand, in the order a consumer would return them.
@Suite("GapGuard: reading a partition again when its offsets jump")
struct GapGuardTests {
    static let p0 = TopicPartition("ns.events", 0)
    static let p1 = TopicPartition("ns.events", 1)
    static let other = TopicPartition("ns.commands.svc", 0)

    func message(_ offset: Int64, on tp: TopicPartition = p0) -> KafkaMessage {
        KafkaMessage(topic: tp.topic, partition: tp.partition, offset: offset, key: nil, value: nil)
    }

    /// The verdicts for these offsets of one partition, in order.
    func verdicts(_ offsets: [Int64], on tp: TopicPartition = p0, _ guardian: inout GapGuard) -> [GapGuard.Verdict] {
        offsets.map { guardian.check(message($0, on: tp)) }
    }

    @Test func consecutiveOffsetsAreTakenStartingFromWhateverComesFirst() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([41, 42, 43, 44], &guardian) == [.take, .take, .take, .take])
    }

    @Test func aGapNotSeenBeforeIsReadAgainFromItsFirstOffsetAndTheRecordAfterItIsNotTaken() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 1, 5], &guardian) == [.take, .take, .reread(from: 2)])
    }

    @Test func recordsFoundInTheGapWhenReadingAgainAreTakenAndTheFirstOneIsReportedAsAFilledGap() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 1, 5], &guardian) == [.take, .take, .reread(from: 2)])
        // Read again from 2: the broker now shows the records it had skipped.
        #expect(verdicts([2, 3, 4, 5, 6], &guardian) == [.filledGap(from: 2, to: 5), .take, .take, .take, .take])
    }

    @Test func aGapSeenASecondTimeAtTheSamePlaceIsTakenRatherThanReadAgain() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 1, 5], &guardian) == [.take, .take, .reread(from: 2)])
        // Read again from 2, and 5 still comes next: a real gap (transaction markers, aborted records).
        #expect(verdicts([5, 6], &guardian) == [.take, .take])
    }

    @Test func aLaterGapIsReadAgainAfterAnEarlierOneTurnedOutReal() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 2, 2, 3, 7], &guardian) == [.take, .reread(from: 1), .take, .take, .reread(from: 4)])
    }

    @Test func aGapThatEndsElsewhereWhenReadAgainIsReadAgainOnce() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 4], &guardian) == [.take, .reread(from: 1)])
        // Read again from 1: now it runs to 6, not 4. Not the gap seen before, so read once more; the same again is real.
        #expect(verdicts([6], &guardian) == [.reread(from: 1)])
        #expect(verdicts([6, 7], &guardian) == [.take, .take])
    }

    @Test func recordsBeforeTheNextOffsetAreDroppedAsAlreadyTaken() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 1, 2, 3], &guardian) == [.take, .take, .take, .take])
        #expect(verdicts([1, 2, 3, 4], &guardian) == [.drop, .drop, .drop, .take])
    }

    @Test func afterAFilledGapTheRecordsOfTheFirstReadAreDroppedWhenTheyComeAgain() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 3], &guardian) == [.take, .reread(from: 1)])
        #expect(verdicts([1, 2, 3], &guardian) == [.filledGap(from: 1, to: 3), .take, .take])
        #expect(verdicts([3, 2], &guardian) == [.drop, .drop])
    }

    @Test func aDisabledGuardTakesEveryRecordWhateverItsOffset() {
        var guardian = GapGuard(enabled: false)
        #expect(!guardian.enabled)
        #expect(verdicts([0, 5, 5, 2, 100, 3], &guardian) == Array(repeating: .take, count: 6))
        guardian.expect(50, on: Self.p0)
        #expect(verdicts([7], &guardian) == [.take])
    }

    @Test func partitionsAreFollowedEachOnItsOwn() {
        var guardian = GapGuard(enabled: true)
        #expect(guardian.check(message(10, on: Self.p0)) == .take)
        #expect(guardian.check(message(0, on: Self.p1)) == .take)
        #expect(guardian.check(message(3, on: Self.other)) == .take)
        // A gap on p0 is not one on p1, nor on another topic's partition 0.
        #expect(guardian.check(message(15, on: Self.p0)) == .reread(from: 11))
        #expect(guardian.check(message(1, on: Self.p1)) == .take)
        #expect(guardian.check(message(4, on: Self.other)) == .take)
        // p1 jumps to p0's gap offsets: still a gap of its own, read again from p1's next offset.
        #expect(guardian.check(message(15, on: Self.p1)) == .reread(from: 2))
        #expect(guardian.check(message(11, on: Self.p0)) == .filledGap(from: 11, to: 15))
        #expect(guardian.check(message(15, on: Self.p1)) == .take)
        #expect(guardian.check(message(0, on: Self.other)) == .drop)
    }

    @Test func anExpectedOffsetMakesTheFirstRecordAfterItAGap() {
        var guardian = GapGuard(enabled: true)
        guardian.expect(100, on: Self.p0)
        #expect(verdicts([103], &guardian) == [.reread(from: 100)])
    }

    @Test func anExpectedOffsetIsTakenAndRecordsBeforeItAreDropped() {
        var guardian = GapGuard(enabled: true)
        guardian.expect(100, on: Self.p0)
        #expect(verdicts([99, 100, 101], &guardian) == [.drop, .take, .take])
    }

    @Test func expectingNilTakesWhateverComesFirst() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 1, 2], &guardian) == [.take, .take, .take])
        guardian.expect(nil, on: Self.p0)
        #expect(verdicts([0, 1], &guardian) == [.take, .take])
        guardian.expect(nil, on: Self.p0)
        #expect(verdicts([90, 91], &guardian) == [.take, .take])
    }

    @Test func expectingAnOffsetForgetsTheGapReadAgainSoTheSameGapIsReadAgainOnce() {
        var guardian = GapGuard(enabled: true)
        #expect(verdicts([0, 4], &guardian) == [.take, .reread(from: 1)])
        // The consumer was moved (a seek): the gap seen before says nothing about what it reads now.
        guardian.expect(1, on: Self.p0)
        #expect(verdicts([4], &guardian) == [.reread(from: 1)])
        #expect(verdicts([4], &guardian) == [.take])
    }

    @Test func expectingAnOffsetOnOnePartitionLeavesTheOthersAlone() {
        var guardian = GapGuard(enabled: true)
        #expect(guardian.check(message(0, on: Self.p0)) == .take)
        #expect(guardian.check(message(0, on: Self.p1)) == .take)
        guardian.expect(nil, on: Self.p1)
        #expect(guardian.check(message(0, on: Self.p0)) == .drop)
        #expect(guardian.check(message(0, on: Self.p1)) == .take)
    }

    @Test func forgottenPartitionsStartAfreshAndTheOthersDoNot() {
        var guardian = GapGuard(enabled: true)
        #expect(guardian.check(message(5, on: Self.p0)) == .take)
        #expect(guardian.check(message(9, on: Self.p0)) == .reread(from: 6))
        #expect(guardian.check(message(5, on: Self.p1)) == .take)
        #expect(guardian.check(message(5, on: Self.other)) == .take)
        guardian.forget([Self.p0, Self.p1])
        #expect(guardian.check(message(0, on: Self.p0)) == .take)
        #expect(guardian.check(message(1, on: Self.p0)) == .take)
        #expect(guardian.check(message(2, on: Self.p1)) == .take)
        #expect(guardian.check(message(5, on: Self.other)) == .drop)
    }

    @Test(arguments: [
        (GapRereads.on, nil, true), (.on, "kafka-cluster", true),
        (.off, nil, false), (.off, GapRereads.tansuClusterID, false),
        (.auto, GapRereads.tansuClusterID, true), (.auto, "kafka-cluster", false), (.auto, nil, false),
    ] as [(GapRereads, String?, Bool)])
    func rereadsAreOnForTansuOnlyWhenAutomatic(setting: GapRereads, clusterID: String?, enabled: Bool) {
        #expect(setting.enabled(clusterID: clusterID) == enabled)
    }
}

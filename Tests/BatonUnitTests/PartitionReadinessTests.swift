import BatonKafka
import BatonRuntime
import Testing

@Suite("PartitionReadiness: joined, and every partition given was taken")
struct PartitionReadinessTests {
    static let a = TopicPartition("ns.events", 0)
    static let b = TopicPartition("ns.events", 1)

    @Test func aServiceThatHasNotJoinedIsNotReady() {
        let readiness = PartitionReadiness()
        #expect(!readiness.isReady)
        readiness.taking(Self.a)
        readiness.took(Self.a)
        #expect(!readiness.isReady)
    }

    @Test func aServiceThatJoinedAndWasGivenNothingIsReady() {
        let readiness = PartitionReadiness()
        readiness.joined()
        #expect(readiness.isReady)
    }

    @Test func itIsReadyOnlyOnceEveryPartitionItIsTakingWasTaken() {
        let readiness = PartitionReadiness()
        readiness.joined()
        readiness.taking(Self.a)
        readiness.taking(Self.b)
        #expect(!readiness.isReady)
        readiness.took(Self.a)
        #expect(!readiness.isReady)
        readiness.took(Self.b)
        #expect(readiness.isReady)
        // Given again: not ready until taken again.
        readiness.taking(Self.b)
        #expect(!readiness.isReady)
    }

    @Test func aPartitionReleasedBeforeItWasTakenIsNotWaitedFor() {
        let readiness = PartitionReadiness()
        readiness.joined()
        readiness.taking(Self.a)
        readiness.released(Self.a)
        #expect(readiness.isReady)
    }

    @Test func anIdleServiceIsReadyWithoutJoiningOrTaking() {
        let readiness = PartitionReadiness()
        readiness.idle(true)
        #expect(readiness.isReady)
        readiness.taking(Self.a)
        #expect(readiness.isReady)
        readiness.idle(false)
        #expect(!readiness.isReady)
    }

    @Test func leavingTheGroupStartsOver() {
        let readiness = PartitionReadiness()
        readiness.joined()
        #expect(readiness.isReady)
        readiness.taking(Self.a)
        readiness.left()
        #expect(!readiness.isReady)
        // Joined again: what was being taken before it left is not waited for.
        readiness.joined()
        #expect(readiness.isReady)
    }

    @Test func aStoppedServiceIsNeverReady() {
        let readiness = PartitionReadiness()
        readiness.joined()
        readiness.stopped()
        #expect(!readiness.isReady)
        readiness.idle(true)
        readiness.joined()
        #expect(!readiness.isReady)
    }
}

import BatonKafka
import BatonTestSupport
import Foundation
import Testing

extension OneAtATime {
    @Suite("Production faults: the offset audit at 1,000 workflows a second", .serialized, .timeLimit(.minutes(6)))
    struct AuditTests {
        /// The benchmark at 1,000 workflows a second offered, as separate processes, ends with the offset audit:
        /// every instance must finish, and none may stop with a command or a result that a group consumed past
        /// without acting on it (the instances left behind that this audit was written to catch).
        @Test func atAThousandWorkflowsASecondEveryInstanceFinishesAndTheAuditFindsNothingSkipped() async throws {
            let bench = try BatonProcess(
                ["bench", "--instances", "5000", "--rate", "1000", "--partitions", "3", "--audit", "--deadline", "240", "--log-level", "warning"],
                namespace: TestKafka.uniqueName("audit"))
            let status = await bench.exitStatus()
            #expect(status == 0, "the bench ended with \(status):\n\(bench.output.suffix(4000))")
            #expect(bench.output.contains("offered 5000"), "\(bench.output.suffix(2000))")
            #expect(bench.output.contains("audit: every instance finished"), "\(bench.output.suffix(4000))")
        }
    }
}

import Testing

@testable import BatonClient
@testable import BatonOperatorTools
@testable import BatonServer

@Suite struct AuditTextTests {
    /// librdkafka's -1001 ("no committed offset") is said in words, not shown as an offset.
    @Test func aGroupThatCommittedNothingIsSaidSo() {
        #expect(OffsetAudit.committed(-1001, by: "the pool's group") == "the pool's group committed nothing there yet (no member has finished a record on it)")
        #expect(OffsetAudit.committed(-1, by: "the coordinators").contains("nothing there yet"))
        #expect(OffsetAudit.committed(42, by: "the coordinators") == "the coordinators committed offset 42")
    }
}

@Suite struct NotFoundHintTests {
    /// A task id sent raw (`loan-7/approve/1` instead of `loan-7%2Fapprove%2F1`) matches no route: the 404 says why.
    @Test func anIdWithASlashSentRawGetsTheEncodingHint() {
        #expect(idEncodingHint("/v1/tasks/loan-7/credit_manager_approval/1").contains("percent-encoded"))
        #expect(idEncodingHint("/v1/instances/a/b/actions").contains("/v1/instances/loan-7%2F"))
        #expect(idEncodingHint("/v1/nothing/here") == "")
        #expect(idEncodingHint("/v1/tasks/") == "")
    }
}

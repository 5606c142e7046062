import BatonCore
import BatonWire
import Crypto
import Foundation
import Testing

/// Signed authority records and result tokens: what the coordinators apply, and what they refuse and why.
@Suite struct AuthorityTests {
    static let now: Int64 = 1_800_000_000_000
    let server = AuthoritySigner(keyID: "server-1", key: Curve25519.Signing.PrivateKey())
    let alice = AuthoritySigner(keyID: "ops-alice", key: Curve25519.Signing.PrivateKey(), boundTo: Principal(subject: "alice", roles: [Principal.operatorRole]))
    var trusted: TrustedKeys {
        get throws {
            try TrustedKeys(entries: [
                .init(id: "server-1", publicKey: server.publicKey.rawRepresentation.base64EncodedString()),
                .init(id: "ops-alice", publicKey: alice.publicKey.rawRepresentation.base64EncodedString(), principals: .only(["alice"]), roles: .only(["operator"])),
            ])
        }
    }
    let carol = Principal(subject: "carol", roles: ["credit_manager"])

    func decision(by: String = "carol", approved: Bool = true, override: Bool? = nil, attempt: Int = 1) -> DecisionMessage {
        DecisionMessage(instanceID: "loan-1", taskID: "loan-1/approve/\(attempt)", step: "approve", attempt: attempt, approved: approved, by: by, comment: "ok", data: ["limit": 5000], requestID: "r-1", override: override)
    }

    /// Signed, written, read back as a coordinator reads it.
    func roundTrip<R: AuthorityRecord>(_ record: R) throws -> any AuthorityRecord {
        guard case .authority(let read) = try EventMessage.decodeRecord(Wire.encode(record)).credentials else {
            Issue.record("not read as an authority record")
            throw AuthorityRefusal(.unsigned, "not an authority record")
        }
        return read
    }

    @Test func aSignedDecisionVerifiesAsItsPrincipalAfterTheWire() throws {
        var d = decision()
        try server.sign(&d, as: carol, now: Self.now)
        #expect(try trusted.verify(try roundTrip(d), appendedAt: Self.now + 1_000) == .success(carol))
    }

    @Test func anyChangeAfterSigningBreaksTheSignature() throws {
        var d = decision()
        try server.sign(&d, as: carol, now: Self.now)
        var turned = d
        turned.approved = false
        var otherInstance = d
        otherInstance.instanceID = "loan-2"
        var longer = d
        longer.auth?.expiresAt += 86_400_000
        var promoted = d
        promoted.auth?.roles = ["admin"]
        var moreData = d
        moreData.data = ["limit": 5001]
        for forged in [turned, otherInstance, longer, promoted, moreData] {
            #expect(try trusted.verify(try roundTrip(forged), appendedAt: Self.now).refusal?.code == .badSignature)
        }
    }

    @Test func unsignedUntrustedAndExpiredRecordsAreRefusedWithTheirReason() throws {
        #expect(try trusted.verify(decision(), appendedAt: Self.now).refusal?.code == .unsigned)
        // A key of the same name that the coordinators do not hold.
        let impostor = AuthoritySigner(keyID: "server-1", key: Curve25519.Signing.PrivateKey())
        var forged = decision()
        try impostor.sign(&forged, as: carol, now: Self.now)
        #expect(try trusted.verify(forged, appendedAt: Self.now).refusal?.code == .badSignature)
        var unknown = decision()
        try AuthoritySigner(keyID: "laptop", key: Curve25519.Signing.PrivateKey()).sign(&unknown, as: carol, now: Self.now)
        #expect(try trusted.verify(unknown, appendedAt: Self.now).refusal?.code == .badSignature)
        // Captured and sent again once it expired (its validity, then the clocks' leeway).
        var genuine = decision()
        try server.sign(&genuine, as: carol, now: Self.now)
        let expiry = genuine.auth!.expiresAt
        #expect(try trusted.verify(genuine, appendedAt: expiry + TrustedKeys.clockLeeway) == .success(carol))
        #expect(try trusted.verify(genuine, appendedAt: expiry + TrustedKeys.clockLeeway + 1).refusal?.code == .expired)
    }

    @Test func anOperatorsOwnKeySignsOnlyAsThemWithTheirRoles() throws {
        #expect(throws: AuthorityRefusal.self) { try alice.identity(for: carol) }
        #expect(try alice.identity(for: nil) == Principal(subject: "alice", roles: ["operator"]))
        var action = OperatorMessage(instanceID: "loan-1", command: .cancel, reason: "duplicate", by: "alice", requestID: "r-2")
        try alice.sign(&action, as: try alice.identity(for: nil), now: Self.now)
        #expect(try trusted.verify(try roundTrip(action), appendedAt: Self.now) == .success(Principal(subject: "alice", roles: ["operator"])))
        // The same key used to speak for someone else, or with a role it was not given.
        var asBob = OperatorMessage(instanceID: "loan-1", command: .cancel, by: "bob", requestID: "r-3")
        try alice.sign(&asBob, as: Principal(subject: "bob", roles: ["operator"]), now: Self.now)
        #expect(try trusted.verify(asBob, appendedAt: Self.now).refusal?.code == .notAllowed)
        var asAdmin = OperatorMessage(instanceID: "loan-1", command: .cancel, by: "alice", requestID: "r-4")
        try alice.sign(&asAdmin, as: Principal(subject: "alice", roles: ["admin"]), now: Self.now)
        #expect(try trusted.verify(asAdmin, appendedAt: Self.now).refusal?.code == .notAllowed)
    }

    @Test func aSignatureForOnePersonDoesNotCoverARecordNamingAnother() throws {
        var d = decision(by: "carol")
        #expect(throws: AuthorityRefusal.self) { try server.sign(&d, as: Principal(subject: "dave", roles: []), now: Self.now) }
        try server.sign(&d, as: carol, now: Self.now)
        d.by = "dave"
        d.auth?.principal = "dave"
        #expect(try trusted.verify(d, appendedAt: Self.now).refusal?.code == .badSignature)
    }

    @Test func aServiceSignalNeedsNoSignatureButOneNamingAPersonDoes() throws {
        let service = SignalMessage(instanceID: "o-1", name: "paid", data: true, by: nil, requestID: "r-1", sentAt: nil)
        guard case .none = try EventMessage.decodeRecord(Wire.encode(service)).credentials else {
            Issue.record("a service's signal was read as needing a signature")
            return
        }
        let person = SignalMessage(instanceID: "o-1", name: "paid", data: true, by: "ann", requestID: "r-2", sentAt: nil)
        #expect(try trusted.verify(try roundTrip(person), appendedAt: Self.now).refusal?.code == .unsigned)
    }

    @Test func keyFilesAreReadWithErrorsThatNameTheFileAndTheEntry() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("baton-keys-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }  // a leftover temporary folder is harmless
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let (keyFile, entry) = AuthoritySigner.generate(id: "ops-bo", principal: Principal(subject: "bo", roles: ["operator"]))
        try Data(keyFile.utf8).write(to: dir.appendingPathComponent("bo.key"))
        try Data("keys:\n\(entry.yaml)".utf8).write(to: dir.appendingPathComponent("trusted.yaml"))
        let signer = try AuthoritySigner.load(path: dir.appendingPathComponent("bo.key").path)
        #expect(signer.boundTo == Principal(subject: "bo", roles: ["operator"]))
        let keys = try TrustedKeys.load(path: dir.appendingPathComponent("trusted.yaml").path)
        var action = OperatorMessage(instanceID: "i", command: .resume, by: "bo", requestID: "r")
        try signer.sign(&action, as: try signer.identity(for: nil), now: Self.now)
        #expect(keys.verify(action, appendedAt: Self.now) == .success(Principal(subject: "bo", roles: ["operator"])))

        try Data("keys:\n  - { id: k1, public_key: \"bm90IGEga2V5\" }\n".utf8).write(to: dir.appendingPathComponent("bad.yaml"))
        let error = #expect(throws: (any Error).self) { try TrustedKeys.load(path: dir.appendingPathComponent("bad.yaml").path) }
        #expect("\(error!)".contains("bad.yaml") && "\(error!)".contains("keys[0] ('k1')") && "\(error!)".contains("public_key"))
    }

    // MARK: What a verified principal may do (the coordinator's check, with the instance's state)

    static let loanYAML = """
        workflow_id: loan
        steps:
          - { id: score, type: bureau }
          - id: approve
            type: human_task
            depends_on: [score]
            assignee: role:credit_manager
            timeout: 48h
            on_timeout: { action: escalate, escalate_to: role:head_of_credit, then: reject }
          - { id: disburse, type: payments, depends_on: [approve] }
        """

    func waitingLoan() throws -> (Workflow, InstanceState) {
        let workflow = try DefinitionLoader.load(Data(Self.loanYAML.utf8))
        var state = Saga.start(workflow, instanceID: "loan-1", input: [:], now: 0).state
        state = Saga.apply(workflow, to: state, event: .stepCompleted(step: "score", item: nil, attempt: 1, output: ["score": 550]), now: 1).state
        return (workflow, state)
    }

    func security() throws -> CoordinatorSecurity {
        CoordinatorSecurity(trustedKeys: try trusted, resultTokens: try ResultTokens(secret: Data(repeating: 7, count: 32)))
    }

    func admit<R: AuthorityRecord>(_ record: R, _ event: SagaEvent, state: InstanceState, workflow: Workflow) throws -> AuthorityRefusal? {
        try security().admit(.authority(try roundTrip(record)), event, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now)
    }

    func signedDecision(_ principal: Principal, override: Bool? = nil, attempt: Int = 1) throws -> (DecisionMessage, SagaEvent) {
        var d = decision(by: principal.subject, override: override, attempt: attempt)
        try server.sign(&d, as: principal, now: Self.now)
        return (d, .taskDecided(step: "approve", attempt: attempt, approved: true, by: principal.subject, comment: "ok", data: d.data, request: "r-1", override: override ?? false))
    }

    @Test func onlyTheTasksRoleOrAnAdminDecidesAndOnlyAnAdminOverrides() throws {
        let (workflow, state) = try waitingLoan()
        let (byCarol, carolsEvent) = try signedDecision(carol)
        #expect(try admit(byCarol, carolsEvent, state: state, workflow: workflow) == nil)
        let (byClerk, clerksEvent) = try signedDecision(Principal(subject: "dave", roles: ["clerk"]))
        #expect(try admit(byClerk, clerksEvent, state: state, workflow: workflow)?.code == .forbidden)
        let (byAdmin, adminsEvent) = try signedDecision(Principal(subject: "root", roles: ["admin"]), override: true)
        #expect(try admit(byAdmin, adminsEvent, state: state, workflow: workflow) == nil)
        let (overriding, overridingEvent) = try signedDecision(carol, override: true)
        #expect(try admit(overriding, overridingEvent, state: state, workflow: workflow)?.code == .forbidden)
    }

    @Test func afterAnEscalationTheNewRoleDecidesAndTheOldOneNoLonger() throws {
        let (workflow, waiting) = try waitingLoan()
        let escalated = Saga.apply(workflow, to: waiting, event: .timerFired(waiting.timers.first { $0.key.kind == .taskTimeout }!.key), now: 48 * 3_600_000 + 1).state
        let task = try #require(escalated.steps[1].units[0].task)
        #expect(task.assignee == "role:head_of_credit" && task.attempt == 2)
        let (byCarol, carolsEvent) = try signedDecision(carol, attempt: 2)
        #expect(try admit(byCarol, carolsEvent, state: escalated, workflow: workflow)?.code == .forbidden)
        let (byHead, headsEvent) = try signedDecision(Principal(subject: "hana", roles: ["head_of_credit"]), attempt: 2)
        #expect(try admit(byHead, headsEvent, state: escalated, workflow: workflow) == nil)
    }

    @Test func aSignedRequestTheInstanceAppliedAlreadyIsRefusedAsReplayed() throws {
        let (workflow, state) = try waitingLoan()
        // A claim, applied, then written again: the open task's history names its request.
        var claim = ClaimMessage(instanceID: "loan-1", taskID: "loan-1/approve/1", step: "approve", attempt: 1, claimant: "carol", by: "carol", requestID: "r-claim")
        try server.sign(&claim, as: carol, now: Self.now)
        let claimEvent = SagaEvent.taskClaimed(step: "approve", attempt: 1, claimant: "carol", by: "carol", request: "r-claim")
        #expect(try admit(claim, claimEvent, state: state, workflow: workflow) == nil)
        let claimed = Saga.apply(workflow, to: state, event: claimEvent, now: 2).state
        #expect(try admit(claim, claimEvent, state: claimed, workflow: workflow)?.code == .replayed)
        // Another person's claim that lost the race is no replay: its request was never applied (the saga ignores it).
        var late = ClaimMessage(instanceID: "loan-1", taskID: "loan-1/approve/1", step: "approve", attempt: 1, claimant: "carla", by: "carla", requestID: "r-late")
        let carla = Principal(subject: "carla", roles: ["credit_manager"])
        try server.sign(&late, as: carla, now: Self.now)
        let lateEvent = SagaEvent.taskClaimed(step: "approve", attempt: 1, claimant: "carla", by: "carla", request: "r-late")
        #expect(try admit(late, lateEvent, state: claimed, workflow: workflow) == nil)
        // An operator's request, applied, then sent again.
        var cancel = OperatorMessage(instanceID: "loan-1", command: .cancel, reason: "no", by: "alice", requestID: "r-op")
        try alice.sign(&cancel, as: try alice.identity(for: nil), now: Self.now)
        let cancelEvent = SagaEvent.cancel(reason: "no", by: "alice", request: "r-op")
        let cancelled = Saga.apply(workflow, to: state, event: cancelEvent, now: 3).state
        #expect(cancelled.requests.contains("r-op"))
        #expect(try admit(cancel, cancelEvent, state: cancelled, workflow: workflow)?.code == .replayed)
    }

    @Test func operatorActionsAndSignalsNeedAnOperatorOrAdmin() throws {
        let (workflow, state) = try waitingLoan()
        var byCarol = OperatorMessage(instanceID: "loan-1", command: .cancel, reason: "no", by: "carol", requestID: "r-9")
        try server.sign(&byCarol, as: carol, now: Self.now)
        let cancel = SagaEvent.cancel(reason: "no", by: "carol", request: "r-9")
        #expect(try admit(byCarol, cancel, state: state, workflow: workflow)?.code == .forbidden)
        var byAlice = OperatorMessage(instanceID: "loan-1", command: .cancel, reason: "no", by: "alice", requestID: "r-9")
        try alice.sign(&byAlice, as: try alice.identity(for: nil), now: Self.now)
        #expect(try admit(byAlice, .cancel(reason: "no", by: "alice", request: "r-9"), state: state, workflow: workflow) == nil)
    }

    @Test func theMigrationSwitchAppliesUnsignedRecordsButStillChecksSignedOnes() throws {
        let (workflow, state) = try waitingLoan()
        var migrating = try security()
        migrating.acceptUnsigned = true
        let (_, event) = try signedDecision(carol)
        #expect(migrating.admit(.authority(decision()), event, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now) == nil)
        var forged = decision()
        try AuthoritySigner(keyID: "server-1", key: Curve25519.Signing.PrivateKey()).sign(&forged, as: carol, now: Self.now)
        #expect(migrating.admit(.authority(forged), event, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now)?.code == .badSignature)
    }

    // MARK: Result tokens

    @Test func aResultCountsOnlyWithItsOwnCommandsToken() throws {
        let (workflow, state) = try waitingLoan()
        let security = try security()
        let started = Saga.start(workflow, instanceID: "loan-1", input: [:], now: 0).effects
        let command = try #require(started.lazy.compactMap { if case .dispatch(let c) = $0 { c } else { nil } }.first { $0.step == "score" })
        let token = security.token(for: command)
        #expect(token.utf8.count <= 64 && !token.isEmpty)
        let completed = SagaEvent.stepCompleted(step: "score", item: nil, attempt: 1, output: ["score": 900])
        #expect(security.admit(.token(token), completed, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now) == nil)
        #expect(security.admit(.token(nil), completed, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now)?.code == .badToken)
        // The token of another attempt, step, instance or of the compensation does not do.
        let others = [
            security.resultTokens.token(instanceID: "loan-1", step: "score", item: nil, attempt: 2, compensation: false),
            security.resultTokens.token(instanceID: "loan-1", step: "disburse", item: nil, attempt: 1, compensation: false),
            security.resultTokens.token(instanceID: "loan-2", step: "score", item: nil, attempt: 1, compensation: false),
            security.resultTokens.token(instanceID: "loan-1", step: "score", item: nil, attempt: 1, compensation: true),
        ]
        for other in others {
            #expect(security.admit(.token(other), completed, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now)?.code == .badToken)
        }
        // Another secret (another namespace's coordinators) makes other tokens.
        let elsewhere = try ResultTokens(secret: Data(repeating: 8, count: 32))
        #expect(elsewhere.token(instanceID: "loan-1", step: "score", item: nil, attempt: 1, compensation: false) != token)
        var migrating = security
        migrating.acceptMissingTokens = true
        #expect(migrating.admit(.token(nil), completed, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now) == nil)
        #expect(migrating.admit(.token(others[0]), completed, instanceID: "loan-1", state: state, workflow: workflow, appendedAt: Self.now)?.code == .badToken)
    }
}

extension Result where Failure == AuthorityRefusal {
    var refusal: AuthorityRefusal? { if case .failure(let r) = self { r } else { nil } }
}

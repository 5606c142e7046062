import BatonClient
import BatonCore
import BatonKafka
import BatonReadModel
import BatonTestSupport
import BatonWire
import BatonWorker
import Crypto
import Foundation
import Testing

/// On the real broker, with a producer that may write every topic (as on a broker without ACLs): forged
/// decisions, operator actions and results change nothing and are dead-lettered with their reason.
@Suite("Runtime: only signed authority and tokened results count", .serialized, .timeLimit(.minutes(3)))
struct SignedAuthorityTests {
    static let loan = try! String(contentsOf: repositoryRoot.appendingPathComponent("examples/loan-processing.yaml"), encoding: .utf8)  // in the repository

    /// The dead letters of the engine so far: the reason of each, by the kind of the record refused. One per
    /// refused record (its origin): Tansu also serves the letters of a transaction that was aborted and tried again.
    func deadLetters(_ engine: Engine) async throws -> [(kind: String, reason: String)] {
        var seen = Set<String>()
        return try await engine.records(engine.names.deadletter).compactMap { m in
            func header(_ name: String) -> String { m.header(name).map { String(decoding: $0, as: UTF8.self) } ?? "" }
            guard seen.insert("\(header(WireHeaders.deadLetterPartition))@\(header(WireHeaders.deadLetterOffset))").inserted else { return nil }
            let kind = (try? Wire.kind(of: m.value ?? Data()))?.rawValue ?? "?"  // a letter whose value is not a record: shown as ?
            return (kind, header(WireHeaders.deadLetterReason))
        }
    }

    func waitForDeadLetters(_ engine: Engine, count: Int) async throws -> [(kind: String, reason: String)] {
        var letters: [(kind: String, reason: String)] = []
        try await waitUntil("\(count) dead letters", timeout: .seconds(30)) {
            letters = try await deadLetters(engine)
            return letters.count >= count
        }
        return letters
    }

    /// Writes a record to the instance's events partition as any producer could.
    func forge<M: Encodable>(_ engine: Engine, _ message: M, kind: Wire.Kind, instance: String) async throws {
        try await engine.client.sendEvent(message, kind: kind, instanceID: instance)
    }

    @Test func aForgedScoreDecisionOrActionChangesNothingAndTheLoanStillWaitsForTheCreditManager() async throws {
        try await withEngine { engine in
            _ = try await engine.register(Self.loan)
            engine.startCoordinator()
            engine.startWorker("kyc.verify") { _ in ["verified": true] }
            let id = try await engine.start("loan_processing", input: ["applicant": ["email": "ann@example.com"], "amount": 9000], id: "loan-9000")

            // The bureau's command (no worker takes it): its token is what a genuine answer echoes.
            var command: CommandMessage?
            try await waitUntil("the credit_score command", timeout: .seconds(30)) {
                command = try await engine.records(engine.names.commands("bureau.score")).compactMap { $0.value.flatMap(CommandMessage.fastDecode) }.first
                return command != nil
            }
            let genuine = try #require(command)
            #expect(genuine.token != nil, "a coordinator gives every command its token")

            // Any other service writes a score of 900 for it: without a token, and with the token of another attempt.
            var noToken = ResultMessage.completed(genuine, output: ["score": 900])
            noToken.token = nil
            try await forge(engine, noToken, kind: .stepCompleted, instance: id)
            var wrongToken = noToken
            wrongToken.token = TestKeys.security.resultTokens.token(instanceID: id, step: "credit_score", item: nil, attempt: 2, compensation: false)
            try await forge(engine, wrongToken, kind: .stepCompleted, instance: id)
            // A decision and an operator action by anyone who can write the events topic.
            let unsigned = DecisionMessage(instanceID: id, taskID: "\(id)/credit_manager_approval/1", step: "credit_manager_approval", attempt: 1, approved: true, by: "carol", comment: nil, override: true)
            try await forge(engine, unsigned, kind: .taskDecided, instance: id)
            var impostor = unsigned
            try AuthoritySigner(keyID: TestKeys.serverSigner.keyID, key: Curve25519.Signing.PrivateKey()).sign(&impostor, as: .person("carol", "admin"), now: nowMillis())
            try await forge(engine, impostor, kind: .taskDecided, instance: id)
            let cancel = OperatorMessage(instanceID: id, command: .cancel, reason: "forged", by: "ops", requestID: UUID().uuidString)
            try await forge(engine, cancel, kind: .operatorCommand, instance: id)

            // The bureau's real answer, 550, echoing its command's token: the loan now needs a person.
            try await forge(engine, ResultMessage.completed(genuine, output: ["score": 550]), kind: .stepCompleted, instance: id)
            let waiting = try await engine.wait(id, for: [.waiting, .completed, .failed, .cancelled])
            #expect(waiting.status == .waiting)
            let score = waiting.steps[1].units.first?.output
            #expect(score == ["score": 550], "the forged 900 did not count: \(String(describing: score))")
            let tasks = try await engine.client.tasks()
            #expect(tasks.contains { $0.task?.instanceID == id && $0.status == .open && $0.task?.assignee == "role:credit_manager" })

            let letters = try await waitForDeadLetters(engine, count: 5)
            // One partition: in the order they were written.
            #expect(letters.map(\.kind) == ["step.completed", "step.completed", "task.decided", "task.decided", "operator"])
            #expect(letters[0].reason.contains("bad-token: no 'token'"), "\(letters[0].reason)")
            #expect(letters[1].reason.contains("bad-token: the token is not the one of the command of attempt 1 of 'credit_score'"), "\(letters[1].reason)")
            #expect(letters[2].reason.contains("unsigned"), "\(letters[2].reason)")
            #expect(letters[3].reason.contains("bad-signature"), "\(letters[3].reason)")
            #expect(letters[4].reason.contains("unsigned"), "\(letters[4].reason)")
        }
    }

    @Test func aSignedDecisionCountsForTheTasksRoleAndACapturedOneSentAgainAfterItsExpiryDoesNot() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: approval
                steps:
                  - { id: approve, type: human_task, assignee: role:credit_manager }
                  - { id: after, type: svc, depends_on: [approve] }
                """)
            engine.startCoordinator()
            engine.startWorker("svc") { _ in [:] }
            let first = try await engine.start("approval", id: "approval-1")
            let second = try await engine.start("approval", id: "approval-2")
            _ = try await engine.wait(first, for: [.waiting])
            _ = try await engine.wait(second, for: [.waiting])

            // Someone signed by the server, but without the task's role: refused by the coordinator itself.
            let clerk = Principal.person("dave", "clerk")
            var byClerk = DecisionMessage(instanceID: first, taskID: "\(first)/approve/1", step: "approve", attempt: 1, approved: true, by: "dave", comment: nil, requestID: "r-clerk")
            try TestKeys.serverSigner.sign(&byClerk, as: clerk, now: nowMillis())
            try await forge(engine, byClerk, kind: .taskDecided, instance: first)
            // A credit manager's decision on the second loan, captured and written again after it expired.
            var expired = TestKeys.serverSigner
            expired.validity = -(TrustedKeys.clockLeeway + 60_000)
            var replayed = DecisionMessage(instanceID: second, taskID: "\(second)/approve/1", step: "approve", attempt: 1, approved: true, by: "carol", comment: nil, requestID: "r-old")
            try expired.sign(&replayed, as: .person("carol", "credit_manager"), now: nowMillis())
            try await forge(engine, replayed, kind: .taskDecided, instance: second)
            let letters = try await waitForDeadLetters(engine, count: 2).map(\.reason)
            #expect(letters.contains { $0.contains("forbidden: the task is for role:credit_manager; dave (roles: clerk) does not hold it") }, "\(letters)")
            #expect(letters.contains { $0.contains("expired") }, "\(letters)")
            #expect(try await engine.client.tasks().filter { $0.status == .open }.count == 2)

            // The credit manager's own decision counts.
            let task = try #require(try await engine.client.tasks().first { $0.task?.instanceID == first })
            let closed = try await engine.client.decideAndWait(taskID: task.taskID, approve: true, as: .person("carol", "credit_manager"), comment: "fine")
            #expect(closed.status == .approved && closed.decidedBy == "carol")
            #expect(try await engine.wait(first, for: [.completed]).status == .completed)
        }
    }

    @Test func theCommandLineSignsOperatorActionsOnlyWithAnOperatorsOwnKey() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: held
                steps:
                  - { id: approve, type: human_task, assignee: role:credit_manager }
                """)
            engine.startCoordinator()
            let id = try await engine.start("held", id: "held-1")
            _ = try await engine.wait(id, for: [.waiting])
            // With the server's key the command line refuses: that key may act for anyone.
            let withServerKey = try BatonProcess(
                ["instances", "cancel", id, "--reason", "test", "--log-level", "error"], namespace: engine.names.namespace,
                environment: ["BATON_SIGNING_KEY": TestKeys.directory.appendingPathComponent("signing.key").path])
            #expect(await withServerKey.exitStatus() != 0)
            #expect(withServerKey.output.contains("is a server's"), "\(withServerKey.output)")
            // With the operator's own key it is signed as them, and applied.
            let cancelled = try await engine.baton(["instances", "cancel", id, "--reason", "a duplicate"])
            #expect(cancelled.status == 0, "\(cancelled.output)")
            let state = try await engine.wait(id, for: [.cancelled])
            #expect(state.reason?.contains("a duplicate") == true, "\(state.reason ?? "")")
        }
    }

    @Test func decisionsThroughTheServerCountForTheTasksRoleTheEscalatedRoleAndAdmins() async throws {
        try await withServer { s in
            let definition = """
                workflow_id: quick_loan
                steps:
                  - id: approve
                    type: human_task
                    assignee: role:credit_manager
                    timeout: 5s
                    on_timeout: { action: escalate, escalate_to: role:head_of_credit, then: reject }
                """
            for document in [definition, loanDocument] {
                #expect(try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: document, type: "application/yaml").status == 201)
            }
            for id in ["q-1", "q-2", "q-3"] {
                #expect(try await s.call(.POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"loan_processing","instance_id":"\#(id)","input":\#(loanInput(20_000))}"#).status < 300)
            }
            // The task's role: carol decides q-1; an admin decides q-2.
            for (id, who) in [("q-1", s.carol), ("q-2", s.root)] {
                let task = "\(id)/credit_manager_approval/1"
                try await waitUntil("the task of \(id)", timeout: .seconds(60)) { s.model.task(task)?.status == .open }
                let decided = try await s.call(.POST, "/v1/tasks/\(task.replacingOccurrences(of: "/", with: "%2F"))/decision", token: who, body: #"{"approved":true}"#)
                #expect(decided.status == 200 && decided.json["status"] == "approved", "\(decided.text)")
            }
            // After an escalation: the new role decides, the old one no longer.
            let started = try await s.call(.POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"quick_loan","instance_id":"q-esc","input":{}}"#)
            #expect(started.status < 300, "\(started.text)")
            // The escalated task has 5 s too (the step's timeout): the decisions below come well within it.
            let escalated = "q-esc/approve/2"
            try await waitUntil("the escalated task", timeout: .seconds(60)) { s.model.task(escalated)?.status == .open }
            #expect(s.model.task(escalated)?.assignee == "role:head_of_credit")
            let path = "/v1/tasks/\(escalated.replacingOccurrences(of: "/", with: "%2F"))/decision"
            #expect(try await s.call(.POST, path, token: s.carol, body: #"{"approved":true}"#).status == 403)
            let byHead = try await s.call(.POST, path, token: s.hana, body: #"{"approved":true,"comment":"escalated, fine"}"#)
            #expect(byHead.status == 200 && byHead.json["decided_by"] == "hana", "\(byHead.text)")
            #expect(try await s.engine.wait("q-esc", for: [.completed, .failed]).status == .completed)
            // Nothing the server sent was refused by a coordinator.
            #expect(try await s.engine.records(s.engine.names.deadletter).isEmpty)
        }
    }
}

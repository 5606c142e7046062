import AsyncHTTPClient
import BatonClient
import BatonCore
import BatonKafka
import BatonReadModel
@testable import BatonServer
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import JWTKit
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Synchronization
import Testing

/// `baton serve` in this process, on a free port, over an engine's namespace, with three people and two
/// API tokens. Stopped by `stop`, which every test calls even when it fails (`withServer`).
final class Served: Sendable {
    let engine: Engine
    let base: String
    let task: Task<Void, any Error>
    let model: ReadModel
    let operatorToken: String
    let starterToken: String
    /// Session tokens (as the console's cookie holds) of carol (credit_manager), dave (clerk), root (admin),
    /// hana (head_of_credit, who gets escalated tasks).
    let carol: String, dave: String, root: String, hana: String

    init(engine: Engine, limits: EdgeLimits = EdgeLimits()) async throws {
        self.engine = engine
        let (op, opEntry) = AuthFile.newToken(subject: "ops", roles: ["operator"])
        let (starter, starterEntry) = AuthFile.newToken(subject: "shop", roles: ["starter"])
        operatorToken = op
        starterToken = starter
        let file = AuthFile(
            users: [
                .init(name: "carol", passwordHash: AuthFile.hashPassword("carolpass1"), roles: ["credit_manager"]),
                .init(name: "dave", passwordHash: AuthFile.hashPassword("davepass11"), roles: ["clerk"]),
                .init(name: "root", passwordHash: AuthFile.hashPassword("rootpass11"), roles: ["admin"]),
            ], tokens: [opEntry, starterEntry])
        let auth = try await Authenticator(file: file, jwt: nil, sessionSecret: "test-session-secret-\(UUID())")
        carol = try await auth.session(for: Principal(subject: "carol", roles: ["credit_manager"]))
        dave = try await auth.session(for: Principal(subject: "dave", roles: ["clerk"]))
        root = try await auth.session(for: Principal(subject: "root", roles: ["admin"]))
        hana = try await auth.session(for: Principal(subject: "hana", roles: ["head_of_credit"]))
        model = ReadModel(client: engine.kafka, names: engine.names, logger: TestKafka.logger)
        let service = BatonService(model: model, client: engine.client, auth: auth, signer: TestKeys.serverSigner, logger: TestKafka.logger)
        let (ports, port) = AsyncStream.makeStream(of: Int.self)
        let server = BatonServer(service: service, host: "127.0.0.1", port: 0, limits: limits) { p in
            port.yield(p)
            port.finish()
        }
        task = Task { try await server.run() }
        var bound = 0
        for await p in ports {
            bound = p
            break
        }
        base = "http://127.0.0.1:\(bound)"
        try await model.waitUntilReady(timeout: .seconds(60))
    }

    func stop() async {
        task.cancel()
        _ = await task.result
    }

    struct Answer {
        var status: Int
        var headers: [(String, String)]
        var body: Data
        var json: JSON { (try? JSON.parse(body)) ?? .null }
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    func call(_ method: NIOHTTP1Method, _ path: String, token: String? = nil, body: String? = nil, type: String? = "application/json") async throws -> Answer {
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method.rawValue)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            if let type { request.headers.add(name: "Content-Type", value: type) }
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return Answer(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: Data(buffer: bytes))
    }
}

enum NIOHTTP1Method: String { case GET, POST }

/// Runs `body` with an engine (a coordinator and, unless `loanWorkers` is false, the loan workflow's workers in
/// this process: else each test starts the ones it needs) and a server.
func withServer(limits: EdgeLimits = EdgeLimits(), loanWorkers: Bool = true, _ body: (Served) async throws -> Void) async throws {
    try await withEngine { engine in
        engine.startCoordinator()
        let pools = ["kyc.verify", "bureau.score", "core_banking.open_loan_account", "core_banking.close_loan_account", "payments.disburse", "payments.claw_back", "notification"]
        for pool in loanWorkers ? pools : [] {
            engine.startWorker(pool) { ctx in ["ok": true, "score": 700, "account_id": "acc-1", "transfer_id": "trf-1", "step": .string(ctx.step)] }
        }
        let served = try await Served(engine: engine, limits: limits)
        do {
            try await body(served)
        } catch {
            await served.stop()
            throw error
        }
        await served.stop()
    }
}

let loanDocument = (try? String(contentsOf: repositoryRoot.appendingPathComponent("examples/loan-processing.yaml"), encoding: .utf8)) ?? ""

func loanInput(_ amount: Int) -> String { #"{"applicant":{"name":"Ann","email":"ann@example.com"},"amount":\#(amount)}"# }

/// Starts a loan that needs a credit manager and waits for its task; returns the task id, percent-encoded.
func openLoanTask(_ s: Served, _ id: String) async throws -> String {
    let started = try await s.call(.POST, "/v1/instances?wait=true", token: s.operatorToken, body: #"{"workflow_id":"loan_processing","instance_id":"\#(id)","input":\#(loanInput(20_000))}"#)
    #expect(started.status == 201, "\(started.text)")
    let taskID = "\(id)/credit_manager_approval/1"
    try await waitUntil("the task of \(id)", timeout: .seconds(60)) { s.model.task(taskID)?.status == .open }
    return taskID.replacingOccurrences(of: "/", with: "%2F")
}

@Suite("HTTP API: every route against the real broker", .serialized, .timeLimit(.minutes(5)))
struct ServerTests {
    @Test func healthDocumentsAndAuthentication() async throws {
        try await withServer { s in
            #expect(try await s.call(.GET, "/healthz").status == 200)
            #expect(try await s.call(.GET, "/readyz").json["status"] == "ready")
            // The OpenAPI document served is the one docs/ keeps.
            let served = try await s.call(.GET, "/openapi.yaml")
            let kept = try Data(contentsOf: repositoryRoot.appendingPathComponent("docs/openapi.yaml"))
            #expect(served.status == 200 && served.body == kept, "docs/openapi.yaml and Sources/BatonServer/Resources/openapi.yaml differ")
            // No principal, a wrong token, a malformed header: 401 problems that say why.
            for (token, why) in [(nil, "sign in"), ("bt_nope.nope", "unknown API token"), ("not-a-token", "neither")] as [(String?, String)] {
                let a = try await s.call(.GET, "/v1/instances", token: token)
                #expect(a.status == 401 && a.header("Content-Type") == "application/problem+json", "\(a.text)")
                #expect(a.json["detail"]?.stringValue?.contains(why) == true, "\(a.text)")
                #expect(a.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
            }
            #expect(try await s.call(.GET, "/v1/me", token: s.operatorToken).json == ["subject": "ops", "roles": ["operator"]])
            #expect(try await s.call(.GET, "/v1/me", token: s.carol).json["subject"] == "carol")
            // Unknown routes are problems too.
            let unknown = try await s.call(.GET, "/v1/nothing-here", token: s.carol)
            #expect(unknown.status == 404 && unknown.json["type"] == "https://baton.dev/problems/not-found")
        }
    }

    @Test func definitionsRegisterOnceAndShowTheirDAG() async throws {
        try await withServer { s in
            let first = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            #expect(first.status == 201 && first.header("Location") == "/v1/definitions/loan_processing/versions/1", "\(first.text)")
            #expect(try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml").json["outcome"] == "unchanged")
            let changed = loanDocument.replacingOccurrences(of: "timeout: 48h", with: "timeout: 24h")
            let conflict = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: changed, type: "application/yaml")
            #expect(conflict.status == 409, "\(conflict.text)")
            let invalid = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: #"{"workflow_id":"x","steps":[{"id":"a","type":"t","depends_on":["zz"]}]}"#)
            #expect(invalid.status == 422 && invalid.json["detail"]?.stringValue?.contains("zz") == true, "\(invalid.text)")
            #expect(try await s.call(.POST, "/v1/definitions", token: s.carol, body: loanDocument, type: "application/yaml").status == 403)
            let list = try await s.call(.GET, "/v1/definitions", token: s.carol)
            #expect(list.json["items"]?.arrayValue?.count == 1)
            let latest = try await s.call(.GET, "/v1/definitions/loan_processing", token: s.carol)
            #expect(latest.json["steps"]?.arrayValue?.count == 6 && latest.json["document"]?.stringValue == loanDocument)
            #expect(try await s.call(.GET, "/v1/definitions/loan_processing/versions/2", token: s.carol).status == 404)
            let svg = try await s.call(.GET, "/v1/definitions/loan_processing/versions/1/graph.svg", token: s.carol)
            #expect(svg.header("Content-Type") == "image/svg+xml" && svg.text.contains("credit_manager_approval") && svg.text.hasPrefix("<svg"))
        }
    }

    @Test func startsAreIdempotentAndBadInputIsRefusedWithAProblem() async throws {
        try await withServer { s in
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            let body = #"{"workflow_id":"loan_processing","instance_id":"l-1","input":\#(loanInput(500))}"#
            let accepted = try await s.call(.POST, "/v1/instances", token: s.starterToken, body: body)
            #expect(accepted.status == 202 && accepted.json["outcome"] == "accepted" && accepted.header("Location") == "/v1/instances/l-1", "\(accepted.text)")
            try await s.engine.wait("l-1", for: [.completed])
            try await waitUntil("the read model to show l-1 completed") { s.model.summary("l-1")?.status == .completed }
            let again = try await s.call(.POST, "/v1/instances", token: s.starterToken, body: body)
            #expect(again.status == 200 && again.json["outcome"] == "exists")
            let other = try await s.call(.POST, "/v1/instances", token: s.starterToken, body: #"{"workflow_id":"loan_processing","instance_id":"l-1","input":{"amount":1}}"#)
            #expect(other.status == 409 && other.json["instance_id"] == "l-1" && other.json["input"]?["amount"] == 500, "\(other.text)")
            let made = try await s.call(.POST, "/v1/instances?wait=true", token: s.starterToken, body: #"{"workflow_id":"loan_processing","input":\#(loanInput(100))}"#)
            #expect(made.status == 201 && made.json["instance_id"]?.stringValue?.count == 36, "\(made.text)")
            #expect(try await s.call(.POST, "/v1/instances", token: s.carol, body: body).status == 403)
            // Each bad input: a 4xx problem naming what is wrong, and nothing started.
            let cases: [(String, String?, Int, String)] = [
                (#"{"workflow_id":"loan_processing","instance_id":""}"#, "application/json", 400, "field 'instance_id' must not be empty"),
                (#"{"workflow_id":"loan_processing","instance_id":"\#(String(repeating: "x", count: 201))"}"#, "application/json", 400, "more than the limit of 200"),
                (#"{"workflow_id":"loan_processing","instance_id":"a\u0007b"}"#, "application/json", 400, "control character U+0007"),
                (#"{"workflow_id":"loan_processing","instance_id":"deep","input":{"a":\#(String(repeating: "[", count: 200))\#(String(repeating: "]", count: 200))}}"#, "application/json", 400, "nested more than"),
                (#"{"workflow_id":"nope","instance_id":"n-1"}"#, "application/json", 422, "'nope' is not registered"),
                (#"{"instance_id":"n-2"}"#, "application/json", 400, "field 'workflow_id' is missing"),
                (#"{"workflow_id": 7}"#, "application/json", 400, "field 'workflow_id' must be a string"),
                ("{\"workflow_id\": \"loan_processing\",\n \"input\": [1,}", "application/json", 400, "line 2, column"),
                (#"{"workflow_id":"loan_processing"}"#, "text/plain", 415, "must be application/json"),
                (#"{"workflow_id":"loan_processing"}"#, nil, 415, "the request says none"),
                (#"{"workflow_id":"loan_processing","input":{"blob":"\#(String(repeating: "y", count: 1_100_000))"}}"#, "application/json", 413, "1048576"),
                (#"{"workflow_id":"loan_processing","input":{"blob":"\#(String(repeating: "y", count: 300_000))"}}"#, "application/json", 413, "262144"),
            ]
            for (body, type, status, says) in cases {
                let a = try await s.call(.POST, "/v1/instances", token: s.starterToken, body: body, type: type)
                #expect(a.status == status && a.header("Content-Type") == "application/problem+json", "\(body.prefix(80)): \(a.status) \(a.text.prefix(300))")
                #expect(a.json["detail"]?.stringValue?.contains(says) == true, "\(body.prefix(80)): \(a.text.prefix(300))")
            }
            // Ids in paths: not UTF-8 once decoded, control characters, unknown.
            // (An HTTP client will not send bytes that are not UTF-8 in a path; the decoding is checked directly.)
            #expect(throws: Problem.self) { try decodeID("%FF%FE", what: "instance id") }
            #expect(try decodeID("a%2Fb%20c", what: "task id") == "a/b c")
            #expect(try await s.call(.GET, "/v1/instances/a%0Ab", token: s.carol).status == 400)
            #expect(try await s.call(.GET, "/v1/instances/\(String(repeating: "z", count: 201))", token: s.carol).status == 400)
            #expect(try await s.call(.GET, "/v1/instances/nobody", token: s.carol).status == 404)
            #expect(s.model.instances().items.count == 2, "a refused request started something")
        }
    }

    @Test func listsFilterAndPageAndInstancesShowEverything() async throws {
        try await withServer { s in
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            for i in 0..<7 {
                _ = try await s.call(.POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"loan_processing","instance_id":"p-\#(i)","input":\#(loanInput(i < 5 ? 100 : 50_000))}"#)
            }
            try await waitUntil("5 completed and 2 waiting", timeout: .seconds(60)) {
                s.model.counts()[.completed] == 5 && s.model.counts()[.waiting] == 2
            }
            var seen: [String] = []
            var cursor: String?
            repeat {
                let page = try await s.call(.GET, "/v1/instances?status=completed&limit=2\(cursor.map { "&cursor=\($0)" } ?? "")", token: s.carol)
                seen += page.json["items"]?.arrayValue?.compactMap { $0["instance_id"]?.stringValue } ?? []
                cursor = page.json["next_cursor"]?.stringValue
            } while cursor != nil
            #expect(seen.count == 5 && Set(seen) == Set((0..<5).map { "p-\($0)" }))
            #expect(try await s.call(.GET, "/v1/instances?status=waiting,completed&id_prefix=p-6", token: s.carol).json["items"]?.arrayValue?.count == 1)
            #expect(try await s.call(.GET, "/v1/instances?updated_since=2999-01-01T00:00:00Z", token: s.carol).json["items"]?.arrayValue?.isEmpty == true)
            #expect(try await s.call(.GET, "/v1/instances?status=sleeping", token: s.carol).status == 400)
            #expect(try await s.call(.GET, "/v1/instances?limit=0", token: s.carol).status == 400)
            #expect(try await s.call(.GET, "/v1/instances?cursor=%%%", token: s.carol).status == 400)
            let detail = try await s.call(.GET, "/v1/instances/p-0", token: s.carol).json
            #expect(detail["instance"]?["status"] == "completed")
            #expect(detail["instance"]?["steps"]?.arrayValue?.first?["output"]?["ok"] == true)
            #expect(detail["timeline"]?.arrayValue?.first?["event"] == "started" && detail["timeline"]?.arrayValue?.last?["event"] == "completed")
            let waiting = try await s.call(.GET, "/v1/instances/p-6", token: s.carol).json
            #expect(waiting["tasks"]?.arrayValue?.first?["status"] == "open")
            let svg = try await s.call(.GET, "/v1/instances/p-6/graph.svg", token: s.carol).text
            #expect(svg.contains(#"data-step="credit_manager_approval" data-status="waiting""#) && svg.contains(#"data-step="identity_check" data-status="completed""#))
            // The live stream starts with the instance as it is.
            var request = HTTPClientRequest(url: s.base + "/v1/instances/p-6/events")
            request.headers.add(name: "Authorization", value: "Bearer \(s.carol)")
            let stream = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            #expect(stream.headers.first(name: "Content-Type") == "text/event-stream")
            var text = ""
            for try await chunk in stream.body {
                text += String(buffer: chunk)
                if text.contains("\n\n") { break }
            }
            #expect(text.hasPrefix("event: instance\ndata: {") && text.contains(#""instance_id":"p-6""#), "\(text.prefix(200))")
        }
    }

    @Test func tasksAreClaimedAndDecidedOnlyByTheirRoleAndTheDeciderIsWhoSignedIn() async throws {
        try await withServer { s in
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            let task = try await openLoanTask(s, "t-1")
            // The inbox views.
            #expect(try await s.call(.GET, "/v1/tasks?view=open", token: s.carol).json["items"]?.arrayValue?.count == 1)
            #expect(try await s.call(.GET, "/v1/tasks?view=unassigned", token: s.carol).json["items"]?.arrayValue?.first?["actions"] == ["claim", "approve", "reject"])
            #expect(try await s.call(.GET, "/v1/tasks?view=open", token: s.dave).json["items"]?.arrayValue?.isEmpty == true)
            #expect(try await s.call(.GET, "/v1/tasks?view=nope", token: s.carol).status == 400)
            // dave lacks the role: no claim, no decision.
            let forbidden = try await s.call(.POST, "/v1/tasks/\(task)/decision", token: s.dave, body: #"{"approved":true}"#)
            #expect(forbidden.status == 403 && forbidden.header("Content-Type") == "application/problem+json")
            #expect(try await s.call(.POST, "/v1/tasks/\(task)/claim", token: s.dave, body: "{}").status == 403)
            // carol claims it; it is hers (mine), and root (admin) can take it over.
            let claimed = try await s.call(.POST, "/v1/tasks/\(task)/claim", token: s.carol, body: "{}")
            #expect(claimed.status == 200 && claimed.json["claimed_by"] == "carol", "\(claimed.text)")
            #expect(try await s.call(.GET, "/v1/tasks?view=mine", token: s.carol).json["items"]?.arrayValue?.count == 1)
            #expect(try await s.call(.GET, "/v1/tasks?view=unassigned", token: s.carol).json["items"]?.arrayValue?.isEmpty == true)
            let unclaimed = try await s.call(.POST, "/v1/tasks/\(task)/unclaim", token: s.carol)
            #expect(unclaimed.status == 200 && unclaimed.json["claimed_by"] == nil, "\(unclaimed.text)")
            let assigned = try await s.call(.POST, "/v1/tasks/\(task)/claim", token: s.root, body: #"{"assignee":"carol"}"#)
            #expect(assigned.json["claimed_by"] == "carol")
            // A decider's name in the body is not how the decider is known: it is who signed in.
            let decided = try await s.call(.POST, "/v1/tasks/\(task)/decision", token: s.carol, body: #"{"approved":true,"by":"mallory","comment":"fine","data":{"limit":20000}}"#)
            #expect(decided.status == 200 && decided.json["decided_by"] == "carol" && decided.json["status"] == "approved", "\(decided.text)")
            let history = decided.json["history"]?.arrayValue?.compactMap { $0["action"]?.stringValue }
            #expect(history == ["created", "notified", "claimed", "unclaimed", "claimed", "approved"])
            #expect(decided.json["history"]?.arrayValue?.last?["comment"] == "fine")
            let after = try await s.call(.POST, "/v1/tasks/\(task)/decision", token: s.carol, body: #"{"approved":false}"#)
            #expect(after.status == 409)
            let state = try await s.engine.wait("t-1", for: [.completed])
            #expect(state.steps[2].output?["data"] == ["limit": 20000] && state.steps[2].output?["by"] == "carol")
            #expect(try await s.call(.GET, "/v1/tasks?view=completed", token: s.carol).json["items"]?.arrayValue?.count == 1)
            #expect(try await s.call(.GET, "/v1/tasks/t-1%2Fnope%2F1", token: s.carol).status == 404)
        }
    }

    @Test func operatorsActOnSuspendedInstancesOneByOneAndInBulk() async throws {
        try await withServer { s in
            let healed = Atomic<Bool>(false)
            s.engine.startWorker("flaky") { ctx in
                if !healed.load(ordering: .acquiring) { throw StepFailure("down", retryable: false) }
                return ["fixed": true]
            }
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: """
                {"workflow_id":"fragile","on_failure":{"compensate":false,"then":"suspend"},"steps":[{"id":"a","type":"flaky","retry":{"max_attempts":1}}]}
                """)
            for i in 0..<3 { _ = try await s.call(.POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"fragile","instance_id":"f-\#(i)"}"#) }
            try await waitUntil("3 suspended", timeout: .seconds(60)) { s.model.counts()[.suspended] == 3 }
            #expect(try await s.call(.POST, "/v1/instances/f-0/actions", token: s.carol, body: #"{"action":"retry"}"#).status == 403)
            let bad = try await s.call(.POST, "/v1/instances/f-0/actions", token: s.operatorToken, body: #"{"action":"explode"}"#)
            #expect(bad.status == 400 && bad.json["detail"]?.stringValue?.contains("action") == true, "\(bad.text)")
            let refused = try await s.call(.POST, "/v1/instances/f-0/actions", token: s.operatorToken, body: #"{"action":"skip","step":"zz"}"#)
            #expect(refused.status == 409 && refused.json["detail"]?.stringValue?.contains("zz") == true, "\(refused.text)")
            healed.store(true, ordering: .releasing)
            let retried = try await s.call(.POST, "/v1/instances/f-0/actions", token: s.operatorToken, body: #"{"action":"retry"}"#)
            #expect(retried.status == 200 && retried.json["instance"]?["status"] != "suspended", "\(retried.text)")
            let bulk = try await s.call(.POST, "/v1/instances/bulk", token: s.operatorToken, body: #"{"action":"cancel","ids":["f-1","f-2","nobody"],"reason":"bulk"}"#)
            let outcomes = Dictionary(uniqueKeysWithValues: (bulk.json["results"]?.arrayValue ?? []).map { ($0["instance_id"]?.stringValue ?? "", $0["outcome"]?.stringValue ?? "") })
            #expect(outcomes == ["f-1": "applied", "f-2": "applied", "nobody": "refused"], "\(bulk.text)")
            try await s.engine.wait("f-0", for: [.completed])
            try await s.engine.wait("f-2", for: [.cancelled])
            let done = try await s.call(.POST, "/v1/instances/f-2/actions", token: s.operatorToken, body: #"{"action":"resume"}"#)
            #expect(done.status == 409, "\(done.text)")
        }
    }

    @Test func alertsAndDeadLettersAreListedAndADeadLetterIsSentAgain() async throws {
        try await withServer { s in
            // A record no coordinator can read goes to the dead-letter topic.
            try await s.engine.client.produce(ProducerRecord(topic: s.engine.names.events, partition: 0, key: Data("junk".utf8), value: Data("{not json".utf8)))
            try await waitUntil("a dead letter", timeout: .seconds(60)) { !s.model.deadLetters().isEmpty }
            let list = try await s.call(.GET, "/v1/deadletters", token: s.carol)
            let letter = try #require(list.json["items"]?.arrayValue?.first)
            #expect(letter["value"] == "{not json" && letter["source_topic"]?.stringValue == s.engine.names.events && letter["whole"] == true)
            let id = letter["id"]?.stringValue ?? ""
            #expect(try await s.call(.POST, "/v1/deadletters/\(id)/republish", token: s.carol).status == 403)
            let again = try await s.call(.POST, "/v1/deadletters/\(id)/republish", token: s.operatorToken)
            #expect(again.status == 202 && again.json["topic"]?.stringValue == s.engine.names.events, "\(again.text)")
            try await waitUntil("the record sent again is refused again", timeout: .seconds(60)) { s.model.deadLetters().count == 2 }
            #expect(try await s.call(.GET, "/v1/deadletters/0-999999", token: s.carol).status == 404)
            // A failed loan alerts the on-call.
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            let task = try await openLoanTask(s, "a-1")
            _ = try await s.call(.POST, "/v1/tasks/\(task)/decision", token: s.carol, body: #"{"approved":false,"comment":"no"}"#)
            try await waitUntil("an alert", timeout: .seconds(60)) { !s.model.alerts().isEmpty }
            let alerts = try await s.call(.GET, "/v1/alerts?limit=5", token: s.carol)
            #expect(alerts.json["items"]?.arrayValue?.first?["alert"]?["instance_id"] == "a-1", "\(alerts.text)")
        }
    }

    @Test func theCommandLineDecidesThroughTheServerWithAToken() async throws {
        try await withServer { s in
            _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
            let task = try await openLoanTask(s, "cli-1").replacingOccurrences(of: "%2F", with: "/")
            let asDave = try await s.engine.baton(["tasks", "approve", task, "--server", s.base, "--token", s.dave])
            #expect(asDave.status != 0 && asDave.output.contains("403"), "\(asDave.output)")
            let noServer = try await s.engine.baton(["tasks", "approve", task])
            #expect(noServer.status != 0 && noServer.output.contains("go through the server"), "\(noServer.output)")
            let listed = try await s.engine.baton(["tasks", "list", "--server", s.base, "--token", s.carol])
            #expect(listed.output.contains(task), "\(listed.output)")
            let approved = try await s.engine.baton(["tasks", "approve", task, "--comment", "ok", "--server", s.base, "--token", s.carol])
            #expect(approved.status == 0 && approved.output.contains("approved \(task) as carol"), "\(approved.output)")
            let status = try await s.engine.baton(["status", "cli-1", "--server", s.base, "--token", s.carol])
            #expect(status.output.contains("credit_manager_approval: completed"), "\(status.output)")
        }
    }
}

@Suite("Authentication: tokens of an identity provider, API tokens, passwords")
struct AuthenticationTests {
    /// Signs claims as an identity provider would (HS256 with a shared secret).
    func sign(_ claims: [String: JSON], secret: String = "idp-secret-0123456789-0123456789-abc") async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(AnyClaims(claims))
    }

    func authenticator(_ configure: (inout JWTSettings) -> Void = { _ in }) async throws -> Authenticator {
        var jwt = JWTSettings()
        jwt.hmacSecret = "idp-secret-0123456789-0123456789-abc"
        jwt.issuer = "https://idp.example.com"
        jwt.audience = "baton"
        configure(&jwt)
        let (_, entry) = AuthFile.newToken(subject: "svc", roles: ["starter"])
        return try await Authenticator(
            file: AuthFile(users: [.init(name: "carol", passwordHash: AuthFile.hashPassword("carolpass1"), roles: ["credit_manager"])], tokens: [entry]),
            jwt: jwt, sessionSecret: String(repeating: "s", count: 32))
    }

    var later: JSON { .number(Date().timeIntervalSince1970 + 300) }

    @Test func rolesComeFromTheConfiguredClaimAndEveryCheckHolds() async throws {
        let keycloak = try await authenticator { $0.rolesClaim = "realm_access.roles"; $0.subjectClaim = "preferred_username" }
        let token = try await sign([
            "sub": "f81d4fae", "preferred_username": "carol", "iss": "https://idp.example.com", "aud": ["baton", "other"], "exp": later,
            "realm_access": ["roles": ["credit_manager", "offline_access"]],
        ])
        #expect(try await keycloak.principal(bearer: token) == Principal(subject: "carol", roles: ["credit_manager", "offline_access"]))
        let plain = try await authenticator()
        let spaced = try await sign(["sub": "bob", "iss": "https://idp.example.com", "aud": "baton", "exp": later, "roles": "operator admin"])
        #expect(try await plain.principal(bearer: spaced).roles == ["operator", "admin"])
        // Refused: expired, another issuer, another audience, no expiry, another key, a forged signature.
        let refused: [([String: JSON], String, String)] = [
            (["sub": "x", "iss": "https://idp.example.com", "aud": "baton", "exp": .number(Date().timeIntervalSince1970 - 120)], "idp-secret-0123456789-0123456789-abc", "expired"),
            (["sub": "x", "iss": "https://evil.example.com", "aud": "baton", "exp": later], "idp-secret-0123456789-0123456789-abc", "issuer"),
            (["sub": "x", "iss": "https://idp.example.com", "aud": "someone-else", "exp": later], "idp-secret-0123456789-0123456789-abc", "audience"),
            (["sub": "x", "iss": "https://idp.example.com", "aud": "baton"], "idp-secret-0123456789-0123456789-abc", "expiry"),
            (["sub": "x", "iss": "https://idp.example.com", "aud": "baton", "exp": later], "another-secret-98765-0123456789-abcdef", "signature"),
        ]
        for (claims, secret, why) in refused {
            let token = try await sign(claims, secret: secret)
            await #expect(throws: AuthError.self, "\(why)") { try await plain.principal(bearer: token) }
            do { _ = try await plain.principal(bearer: token) } catch let error as AuthError { #expect(error.description.contains(why), "\(error)") }
        }
    }

    @Test func passwordsAndAPITokens() async throws {
        let auth = try await authenticator()
        #expect(await auth.signIn(name: "carol", password: "carolpass1")?.roles == ["credit_manager"])
        #expect(await auth.signIn(name: "carol", password: "wrong-pass") == nil)
        #expect(await auth.signIn(name: "nobody", password: "carolpass1") == nil)
        let (token, entry) = AuthFile.newToken(subject: "shop", roles: ["starter"])
        let withToken = try await Authenticator(file: AuthFile(tokens: [entry]), jwt: nil, sessionSecret: String(repeating: "s", count: 32))
        #expect(try await withToken.principal(bearer: token) == Principal(subject: "shop", roles: ["starter"]))
        let forged = token.dropLast(2) + "00"
        await #expect(throws: AuthError.self) { try await withToken.principal(bearer: String(forged)) }
        // The file keeps only the hash of the token.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID()).yaml").path
        try AuthFile(tokens: [entry]).save(path)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains(token) && text.contains(entry.sha256))
        #expect(try AuthFile.load(path) == AuthFile(tokens: [entry]))
        try Data("users: [{name: x, password_hash: plain, roles: []}]".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: AuthError.self) { try AuthFile.load(path) }
    }
}

extension OneAtATime {
    /// Two decisions raced through the server must each be answered once the coordinator applied one (200) or
    /// refused the other (409), within the server's apply timeout: beside the one-at-a-time loads (the 1,000/s
    /// audit) on 2 cores, the coordinator could take longer than that and both got 202.
    @Suite("HTTP API: an approve and a reject sent together", .serialized, .timeLimit(.minutes(3)))
    struct DecisionRaceTests {
        @Test func ofAnApproveAndARejectSentTogetherExactlyOneWins() async throws {
            try await withServer { s in
                _ = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: loanDocument, type: "application/yaml")
                for round in 0..<3 {
                    let task = try await openLoanTask(s, "race-\(round)")
                    async let approve = s.call(.POST, "/v1/tasks/\(task)/decision", token: s.carol, body: #"{"approved":true}"#)
                    async let reject = s.call(.POST, "/v1/tasks/\(task)/decision", token: s.carol, body: #"{"approved":false}"#)
                    let answers = try await [approve, reject]
                    #expect(answers.map(\.status).sorted() == [200, 409], "\(answers.map { "\($0.status) \($0.text.prefix(200))" })")
                    let winner = answers.first { $0.status == 200 }?.json["status"]?.stringValue
                    try await waitUntil("the task of race-\(round) closed") { s.model.task("race-\(round)/credit_manager_approval/1")?.status != .open }
                    #expect(s.model.task("race-\(round)/credit_manager_approval/1")?.status.rawValue == winner)
                }
            }
        }
    }
}

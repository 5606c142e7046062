import BatonClient
import BatonCore
import BatonKafka
import BatonReadModel
import BatonWire
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdAuth
import NIOCore
import ServiceLifecycle

/// Finds the principal of a request: `Authorization: Bearer <token>` (an API token, a JWT, a session), else the
/// console's session cookie. A token that is present but refused is a 401 that says why.
struct PrincipalMiddleware: RouterMiddleware {
    typealias Context = ServerContext
    let auth: Authenticator

    func handle(_ request: Request, context: ServerContext, next: (Request, ServerContext) async throws -> Response) async throws -> Response {
        var context = context
        if let header = request.headers[.authorization] {
            guard header.lowercased().hasPrefix("bearer ") else { throw Problem.unauthorized("the Authorization header must be 'Bearer <token>'") }
            let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
            do {
                context.identity = try await auth.principal(bearer: token)
            } catch let error as AuthError {
                throw Problem.unauthorized(error.description)
            }
        } else if let cookie = request.cookies[Console.sessionCookie]?.value, !cookie.isEmpty {
            context.identity = try? await auth.principal(bearer: cookie)  // an expired or foreign session is no session: sign in again
            context.viaCookie = context.identity != nil
            // A write with the console's cookie must say it is JSON, which a form on another site cannot send
            // without the browser asking this server first (it never agrees): no cross-site request forgery.
            if context.viaCookie, request.method != .get, request.method != .head, request.uri.path.hasPrefix("/v1/"),
                request.headers[.contentType].flatMap({ MediaType(from: $0) })?.isType(.applicationJson) != true
            {
                throw Problem.forbidden("a write signed in with the console's cookie must be sent as application/json")
            }
        }
        return try await next(request, context)
    }
}

extension ServerContext {
    func principal() throws -> Principal {
        guard let identity else { throw Problem.unauthorized("sign in: send 'Authorization: Bearer <token>'") }
        return identity
    }
    func requireOperator() throws -> Principal {
        let p = try principal()
        guard p.isOperator else { throw Problem.forbidden("\(p.subject) is not an operator or admin") }
        return p
    }
}

enum QueryParse {
    static func int(_ request: Request, _ name: String, range: ClosedRange<Int>) throws -> Int? {
        guard let text = request.uri.queryParameters[Substring(name)].map(String.init), !text.isEmpty else { return nil }
        guard let v = Int(text), range.contains(v) else { throw Problem.badRequest("query parameter '\(name)' must be a whole number in \(range.lowerBound)...\(range.upperBound); got '\(text)'") }
        return v
    }
    static func string(_ request: Request, _ name: String) throws -> String? {
        guard let raw = request.uri.queryParameters[Substring(name)] else { return nil }
        let text = String(raw).replacingOccurrences(of: "+", with: " ")
        return text.isEmpty ? nil : text
    }
    static func bool(_ request: Request, _ name: String) throws -> Bool {
        guard let text = try string(request, name) else { return false }
        switch text { case "true", "1", "yes": return true; case "false", "0", "no": return false
        default: throw Problem.badRequest("query parameter '\(name)' must be true or false; got '\(text)'")
        }
    }
    /// A time as milliseconds since the epoch or RFC 3339 (`2026-11-25T10:00:00Z`).
    static func time(_ request: Request, _ name: String) throws -> Int64? {
        guard let text = try string(request, name) else { return nil }
        if let ms = Int64(text) { return ms }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) ?? ISO8601DateFormatter().date(from: text) { return Int64(d.timeIntervalSince1970 * 1000) }
        throw Problem.badRequest("query parameter '\(name)' must be milliseconds since the epoch or an RFC 3339 time; got '\(text)'")
    }

    static func filter(_ request: Request) throws -> InstanceFilter {
        var f = InstanceFilter()
        if let text = try string(request, "status") {
            var set = Set<InstanceStatus>()
            for part in text.split(separator: ",") {
                guard let s = InstanceStatus(rawValue: String(part)) else {
                    throw Problem.badRequest("unknown status '\(part)'; known: \(InstanceStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                set.insert(s)
            }
            f.statuses = set
        }
        f.workflowID = try string(request, "workflow")
        f.version = try int(request, "version", range: 1...Int(Int32.max))
        f.updatedSince = try time(request, "updated_since")
        f.idPrefix = try string(request, "id_prefix")
        return f
    }
}

struct InstanceList: Encodable {
    var items: [InstanceSummary]
    var nextCursor: String?
    var counts: [String: Int]
    enum CodingKeys: String, CodingKey { case items, nextCursor = "next_cursor", counts }
}

struct TaskWithActions: Encodable {
    var task: TaskView
    var actions: [String]
    func encode(to encoder: any Encoder) throws {
        try task.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(actions, forKey: .actions)
    }
    enum Keys: String, CodingKey { case actions }
}

struct BulkRequest: Decodable {
    var action: OperatorMessage.Command
    var ids: [String]?
    var filter: Filter?
    var step: String?
    var reason: String?
    /// Which instances a bulk action takes. Every criterion given narrows the selection, so none may be empty,
    /// and a filter must give one (`null`s are refused before decoding: `Request.refuseNulls`).
    struct Filter: Decodable {
        var status: [InstanceStatus]?
        var workflow: String?
        var version: Int?
        var idPrefix: String?
        enum CodingKeys: String, CodingKey { case status, workflow, version, idPrefix = "id_prefix" }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            status = try c.decodeIfPresent([InstanceStatus].self, forKey: .status)
            workflow = try c.decodeIfPresent(String.self, forKey: .workflow)
            version = try c.decodeIfPresent(Int.self, forKey: .version)
            idPrefix = try c.decodeIfPresent(String.self, forKey: .idPrefix)
            if status?.isEmpty == true { throw Problem.badRequest("field 'filter.status' is empty; name at least one status, or leave it out") }
            if workflow?.isEmpty == true { throw Problem.badRequest("field 'filter.workflow' is empty; name a workflow, or leave it out") }
            if idPrefix?.isEmpty == true { throw Problem.badRequest("field 'filter.id_prefix' is empty; give a prefix, or leave it out") }
            if let version, version < 1 { throw Problem.badRequest("field 'filter.version' must be a whole number from 1") }
            if status == nil, workflow == nil, version == nil, idPrefix == nil {
                throw Problem.badRequest("field 'filter' names no criterion; give status, workflow, version or id_prefix")
            }
        }
    }
}

struct BulkResult: Encodable {
    var instanceID: String
    var outcome: BatonService.ActionOutcome
    var detail: String?
    enum CodingKeys: String, CodingKey { case instanceID = "instance_id", outcome, detail }
}

extension BatonService {
    /// Adds the JSON API (`/v1`), the health checks and the OpenAPI document.
    func addAPI(to router: Router<ServerContext>) {
        router.get("healthz") { _, _ in JSONBody(["status": "ok"]) }
        router.get("readyz") { _, _ in
            model.isReady ? JSONBody(["status": "ready"]) : JSONBody(["status": "catching up"], status: .serviceUnavailable)
        }
        router.get("openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_yaml)))
        }
        let v1 = router.group("v1")
        v1.get("me") { _, context in JSONBody(try context.principal()) }

        // Definitions
        v1.post("definitions") { request, context -> Response in
            _ = try context.requireOperator()
            let data = try await request.bodyData(context: context)
            let (workflow, outcome) = try await register(data)
            let body = JSONBody(["workflow_id": .string(workflow.id), "version": .number(Double(workflow.version)), "outcome": .string(outcome.rawValue)] as [String: JSON],
                                status: outcome == .registered ? .created : .ok,
                                headers: [.location: "/v1/definitions/\(Self.escape(workflow.id))/versions/\(workflow.version)"])
            return try body.response(from: request, context: context)
        }
        v1.get("definitions") { _, context in
            _ = try context.principal()
            return JSONBody(["items": model.definitions()])
        }
        v1.get("definitions/{id}") { _, context in
            _ = try context.principal()
            return try definitionJSON(try pathID(context, "id", what: "workflow id"), version: nil)
        }
        v1.get("definitions/{id}/versions/{version}") { _, context in
            _ = try context.principal()
            return try definitionJSON(try pathID(context, "id", what: "workflow id"), version: try Self.version(context))
        }
        v1.get("definitions/{id}/versions/{version}/graph.svg") { _, context in
            _ = try context.principal()
            let id = try pathID(context, "id", what: "workflow id")
            let version = try Self.version(context)
            guard let (_, workflow) = model.definition(id, version: version), let workflow else { throw Problem.notFound("no workflow '\(id)' version \(version)") }
            return Self.svg(GraphSVG.render(workflow, state: nil))
        }

        // Instances
        v1.post("instances") { request, context -> Response in
            let p = try context.principal()
            guard p.mayStart else { throw Problem.forbidden("\(p.subject) may not start instances (needs operator, admin or starter)") }
            let body = try await request.decodeJSON(StartRequest.self, context: context)
            let answer = try await start(body, wait: try QueryParse.bool(request, "wait"))
            let status: HTTPResponse.Status = answer.outcome == .created ? .created : answer.outcome == .exists ? .ok : .accepted
            return try JSONBody(answer, status: status, headers: [.location: "/v1/instances/\(Self.escape(answer.instanceID))"]).response(from: request, context: context)
        }
        v1.get("instances") { request, context in
            _ = try context.principal()
            let filter = try QueryParse.filter(request)
            let limit = try QueryParse.int(request, "limit", range: 1...1000) ?? 50
            var cursor: PageCursor?
            if let token = try QueryParse.string(request, "cursor") {
                guard let c = PageCursor(token: token) else { throw Problem.badRequest("query parameter 'cursor' is not a cursor this server gave") }
                cursor = c
            }
            let page = model.instances(filter, limit: limit, after: cursor)
            let counts = Dictionary(uniqueKeysWithValues: model.counts().map { ($0.key.rawValue, $0.value) })
            return JSONBody(InstanceList(items: page.items, nextCursor: page.next?.token, counts: counts))
        }
        v1.post("instances/bulk") { request, context in
            let p = try context.requireOperator()
            let body = try await request.decodeJSON(BulkRequest.self, context: context)
            var ids = body.ids ?? []
            if let f = body.filter {
                let filter = InstanceFilter(statuses: f.status.map(Set.init), workflowID: f.workflow, version: f.version, idPrefix: f.idPrefix)
                ids += model.instances(filter, limit: 1001).items.map(\.instanceID)
            }
            guard !ids.isEmpty else { throw Problem.badRequest("name the instances: 'ids', or a 'filter' that matches some") }
            guard ids.count <= 1000 else { throw Problem.badRequest("at most 1000 instances per bulk action; narrow the selection") }
            for id in ids { try checkID(id, what: "instance id") }
            let results = await withTaskGroup(of: BulkResult.self) { group in
                for id in Set(ids) {
                    group.addTask {
                        do {
                            let (outcome, detail) = try await act(ActionRequest(action: body.action, step: body.step, output: nil, reason: body.reason), on: id, by: p)
                            return BulkResult(instanceID: id, outcome: outcome, detail: detail)
                        } catch let problem as Problem {
                            return BulkResult(instanceID: id, outcome: .refused, detail: problem.detail)
                        } catch {
                            return BulkResult(instanceID: id, outcome: .refused, detail: "\(error)")
                        }
                    }
                }
                var out: [BulkResult] = []
                for await r in group { out.append(r) }
                return out.sorted { $0.instanceID < $1.instanceID }
            }
            return JSONBody(["results": results])
        }
        v1.get("instances/{id}") { _, context in
            _ = try context.principal()
            let id = try pathID(context, "id", what: "instance id")
            guard let detail = model.detail(id) else { throw Problem.notFound("no instance '\(id)'") }
            return JSONBody(detail)
        }
        v1.get("instances/{id}/graph.svg") { _, context in
            _ = try context.principal()
            let id = try pathID(context, "id", what: "instance id")
            guard let (state, workflow, _) = model.state(id), let workflow else { throw Problem.notFound("no instance '\(id)' (or its definition)") }
            return Self.svg(GraphSVG.render(workflow, state: state))
        }
        v1.post("instances/{id}/actions") { request, context -> Response in
            let p = try context.requireOperator()
            let id = try pathID(context, "id", what: "instance id")
            let body = try await request.decodeJSON(ActionRequest.self, context: context)
            let (outcome, detail) = try await act(body, on: id, by: p)
            switch outcome {
            case .refused: throw Problem.conflict(detail ?? "refused")
            case .applied: return try JSONBody(model.detail(id), status: .ok).response(from: request, context: context)
            case .pending: return try JSONBody(["outcome": "pending", "detail": detail ?? ""], status: .accepted).response(from: request, context: context)
            }
        }
        v1.post("instances/{id}/signals/{name}") { request, context -> Response in
            let p = try context.requireOperator()
            let id = try pathID(context, "id", what: "instance id")
            let name = try pathID(context, "name", what: "signal name")
            let body = try await request.decodeJSON(SignalRequest.self, context: context)
            let (outcome, detail) = try await signal(name, body, on: id, by: p)
            switch outcome {
            case .refused: throw Problem.conflict(detail ?? "refused")
            case .applied: return try JSONBody(model.detail(id), status: .ok).response(from: request, context: context)
            case .pending: return try JSONBody(["outcome": "pending", "detail": detail ?? ""], status: .accepted).response(from: request, context: context)
            }
        }
        v1.get("instances/{id}/events") { request, context -> Response in
            _ = try context.principal()
            let id = try pathID(context, "id", what: "instance id")
            guard model.summary(id) != nil else { throw Problem.notFound("no instance '\(id)'") }
            return stream(request) { change in change.kind == .instance && change.instanceID == id || change.kind == .task && change.instanceID == id } initial: {
                model.detail(id).map { ("instance", Self.encode($0)) }
            } render: { _ in model.detail(id).map { ("instance", Self.encode($0)) } }
        }
        v1.get("events") { request, context -> Response in
            _ = try context.principal()
            let filter = try QueryParse.filter(request)
            let kinds = try QueryParse.string(request, "kinds").map { Set($0.split(separator: ",").map(String.init)) }
            return stream(request) { change in
                if let kinds, !kinds.contains(change.kind.rawValue) { return false }
                if change.kind == .instance, let id = change.instanceID, let s = model.summary(id) { return filter.matches(s) }
                return filter.statuses == nil && filter.idPrefix == nil || change.kind != .instance
            } initial: { nil } render: { change in (change.kind.rawValue, Self.encode(change)) }
        }

        // Tasks
        v1.get("tasks") { request, context in
            let p = try context.principal()
            let viewName = try QueryParse.string(request, "view") ?? "open"
            guard let view = InboxView(rawValue: viewName) else {
                throw Problem.badRequest("unknown view '\(viewName)'; known: \(InboxView.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let instanceID = try QueryParse.string(request, "instance_id")
            let tasks = inbox(view, for: p, instanceID: instanceID, search: try QueryParse.string(request, "q"))
            return JSONBody(["items": tasks.map { TaskWithActions(task: $0, actions: actions($0, for: p)) }])
        }
        v1.get("tasks/{id}") { _, context in
            let p = try context.principal()
            let id = try pathID(context, "id", what: "task id")
            guard let task = model.task(id) else { throw Problem.notFound("no task '\(id)'") }
            return JSONBody(TaskWithActions(task: task, actions: actions(task, for: p)))
        }
        v1.post("tasks/{id}/claim") { request, context -> Response in
            let p = try context.principal()
            let id = try pathID(context, "id", what: "task id")
            let data = try await request.bodyData(context: context)
            let body = data.isEmpty ? ClaimRequest(assignee: nil) : try Request.decode(ClaimRequest.self, from: data)
            return try taskAnswer(try await claim(id, claimant: body.assignee ?? p.subject, by: p), principal: p).response(from: request, context: context)
        }
        v1.post("tasks/{id}/unclaim") { request, context -> Response in
            let p = try context.principal()
            let id = try pathID(context, "id", what: "task id")
            return try taskAnswer(try await claim(id, claimant: nil, by: p), principal: p).response(from: request, context: context)
        }
        v1.post("tasks/{id}/decision") { request, context -> Response in
            let p = try context.principal()
            let id = try pathID(context, "id", what: "task id")
            let body = try await request.decodeJSON(DecisionRequest.self, context: context)
            return try taskAnswer(try await decide(id, body, by: p), principal: p).response(from: request, context: context)
        }

        // Alerts and dead letters
        v1.get("alerts") { request, context in
            _ = try context.principal()
            return JSONBody(["items": model.alerts(limit: try QueryParse.int(request, "limit", range: 1...1000) ?? 100)])
        }
        v1.get("deadletters") { request, context in
            _ = try context.principal()
            return JSONBody(["items": model.deadLetters(limit: try QueryParse.int(request, "limit", range: 1...1000) ?? 100).map(DeadLetterJSON.init)])
        }
        v1.get("deadletters/{id}") { _, context in
            _ = try context.principal()
            let id = try pathID(context, "id", what: "dead letter id")
            guard let entry = model.deadLetter(id) else { throw Problem.notFound("no dead letter '\(id)' among the latest kept") }
            return JSONBody(DeadLetterJSON(entry))
        }
        v1.post("deadletters/{id}/republish") { request, context -> Response in
            let p = try context.requireOperator()
            let id = try pathID(context, "id", what: "dead letter id")
            struct Body: Decodable { var value: JSON? }
            let data = try await request.bodyData(context: context)
            let body: Body = data.isEmpty ? Body(value: nil) : try Request.decode(Body.self, from: data)
            let report = try await republish(id, value: body.value, by: p)
            return try JSONBody(["topic": .string(report.topicPartition.topic), "partition": .number(Double(report.topicPartition.partition)), "offset": .number(Double(report.offset))] as [String: JSON], status: .accepted)
                .response(from: request, context: context)
        }
    }

    func taskAnswer(_ result: (TaskView?, pending: Bool), principal: Principal) -> JSONBody {
        if let task = result.0, !result.pending { return JSONBody(TaskWithActions(task: task, actions: actions(task, for: principal))) }
        return JSONBody(["outcome": "pending", "detail": "sent; no coordinator applied it within \(applyTimeout)"], status: .accepted)
    }

    func definitionJSON(_ id: String, version: Int?) throws -> JSONBody {
        guard let (record, workflow) = model.definition(id, version: version) else {
            throw Problem.notFound(version.map { "no workflow '\(id)' version \($0)" } ?? "no workflow '\(id)'")
        }
        var body: [String: JSON] = [
            "workflow_id": .string(record.workflowID), "version": .number(Double(record.version)), "registered_at": .number(Double(record.registeredAt)),
            "document": .string(record.document),
        ]
        if let workflow {
            body["steps"] = .array(
                workflow.steps.map { s in
                    var o: [String: JSON] = ["id": .string(s.id), "type": .string(s.type), "depends_on": .array(s.dependsOn.map(JSON.string))]
                    if s.hasWorker { o["pool"] = .string(s.pool) }
                    if let e = s.event { o["event_topic"] = .string(e.topic) }
                    if let signal = s.signal { o["signal"] = .string(signal) }
                    if let a = s.humanTask?.assignee { o["assignee"] = .string(a) }
                    if let c = s.compensation { o["compensation"] = .string(c.type) }
                    return .object(o)
                })
        }
        return JSONBody(body)
    }

    static func version(_ context: ServerContext) throws -> Int {
        guard let text = context.parameters.get("version"), let v = Int(text), v >= 1 else { throw Problem.badRequest("the version must be a whole number from 1") }
        return v
    }

    static func escape(_ id: String) -> String { id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id }

    static func svg(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "image/svg+xml"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)  // our own views always encode
    }

    /// A Server-Sent Events stream: `initial` first, then one event per matching change; a comment every 15 s
    /// keeps proxies open and finds clients that left. Ends when the client goes or the server shuts down.
    func stream(
        _ request: Request, matching: @escaping @Sendable (ReadModelChange) -> Bool, initial: @escaping @Sendable () -> (String, String)?,
        render: @escaping @Sendable (ReadModelChange) -> (String, String)?
    ) -> Response {
        let changes = model.changes()
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
            body: .init { writer in
                func event(_ name: String, _ data: String) -> ByteBuffer {
                    ByteBuffer(string: "event: \(name)\ndata: \(data.replacingOccurrences(of: "\n", with: "\ndata: "))\n\n")
                }
                try await request.body.consumeWithCancellationOnInboundClose { _ in
                    if let (name, data) = initial() { try await writer.write(event(name, data)) }
                    // Changes and keep-alive beats come through one stream, so that only this loop writes.
                    enum Item: Sendable { case change(ReadModelChange), beat }
                    let (items, feed) = AsyncStream.makeStream(of: Item.self, bufferingPolicy: .bufferingNewest(10_000))
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for await change in changes where matching(change) { feed.yield(.change(change)) }
                            feed.finish()
                        }
                        group.addTask {
                            while true {
                                try await Task.sleep(for: .seconds(15))
                                feed.yield(.beat)
                            }
                        }
                        for await item in items.cancelOnGracefulShutdown() {
                            switch item {
                            case .beat: try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                            case .change(let change): if let (name, data) = render(change) { try await writer.write(event(name, data)) }
                            }
                        }
                        group.cancelAll()
                    }
                }
                try await writer.finish(nil)
            })
    }
}

struct DeadLetterJSON: Encodable {
    var entry: DeadLetterEntry
    init(_ entry: DeadLetterEntry) { self.entry = entry }
    enum Keys: String, CodingKey { case id, at, reason, sourceTopic = "source_topic", sourcePartition = "source_partition", sourceOffset = "source_offset", key, value, valueBase64 = "value_base64", size, whole }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(entry.id, forKey: .id)
        try c.encode(entry.at, forKey: .at)
        try c.encode(entry.reason, forKey: .reason)
        try c.encodeIfPresent(entry.sourceTopic, forKey: .sourceTopic)
        try c.encodeIfPresent(entry.sourcePartition, forKey: .sourcePartition)
        try c.encodeIfPresent(entry.sourceOffset, forKey: .sourceOffset)
        try c.encodeIfPresent(entry.key.map { String(decoding: $0, as: UTF8.self) }, forKey: .key)
        if let value = entry.value {
            if let text = String(data: value, encoding: .utf8) { try c.encode(text, forKey: .value) } else { try c.encode(value.base64EncodedString(), forKey: .valueBase64) }
        }
        try c.encode(entry.originalSize, forKey: .size)
        try c.encode(entry.isWhole, forKey: .whole)
    }
}

import BatonClient
import BatonCore
import BatonWire
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdAuth
import Logging
import NIOCore
import NIOHTTP1

/// The request context of `baton serve`: who is calling, once authenticated.
public struct ServerContext: AuthRequestContext, RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var identity: Principal?
    /// Set when the principal came from the console's session cookie (pages redirect to sign-in without one).
    public var viaCookie = false

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        identity = nil
    }

    /// Bodies are read up to 1 MiB; more is a 413.
    public var maxUploadSize: Int { ServerLimits.maxBody }
}

public enum ServerLimits {
    public static let maxBody = 1 << 20
}

/// An RFC 9457 problem: every error the API answers is one, as `application/problem+json`.
public struct Problem: HTTPResponseError {
    public var status: HTTPResponse.Status
    public var title: String?
    public var detail: String?
    /// A short, stable name of the problem (`type` is `https://baton.dev/problems/<code>`).
    public var code: ProblemCode
    public var headers: HTTPFields = [:]
    /// Extra members (the instance a conflict is about, the current task...).
    public var extra: [String: JSON] = [:]

    public init(_ status: HTTPResponse.Status, _ code: ProblemCode, _ detail: String?, title: String? = nil, extra: [String: JSON] = [:]) {
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.extra = extra
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var body: [String: JSON] = extra
        body["type"] = .string(code.uri)
        body["title"] = .string(title ?? status.reasonPhrase)
        body["status"] = .number(Double(status.code))
        if let detail { body["detail"] = .string(detail) }
        body["instance"] = .string(request.uri.path)
        var h = headers
        h[.contentType] = "application/problem+json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: JSON.object(body).encoded())))
    }

    static func badRequest(_ detail: String) -> Problem { Problem(.badRequest, .badRequest, detail) }
    static func notFound(_ detail: String) -> Problem { Problem(.notFound, .notFound, detail) }
    static func conflict(_ detail: String, extra: [String: JSON] = [:]) -> Problem { Problem(.conflict, .conflict, detail, extra: extra) }
    static func forbidden(_ detail: String) -> Problem { Problem(.forbidden, .forbidden, detail) }
    static func unauthorized(_ detail: String) -> Problem {
        var p = Problem(.unauthorized, .unauthorized, detail)
        p.headers[.wwwAuthenticate] = #"Bearer realm="baton""#
        return p
    }
}

/// For a path under /v1/tasks/ or /v1/instances/ that matched no route: ids hold `/` (a task id always
/// does: `loan-7/approve/1`), which must be sent as %2F, and an id sent raw makes a path no route has.
func idEncodingHint(_ path: String) -> String {
    let collections = ["/v1/tasks/", "/v1/instances/"]
    guard let prefix = collections.first(where: { path.hasPrefix($0) }), path.dropFirst(prefix.count).contains("/") else { return "" }
    return "; an id with '/' in it goes percent-encoded in the path, as in \(prefix)loan-7%2Fcredit_manager_approval%2F1"
}

/// Turns every error into a problem: Hummingbird's own (unknown route, body too large), decoding errors, a body
/// that ended before its declared length or could not be read (a 400, logged at debug: the client's doing), and
/// anything unexpected (a 500 that is logged).
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let problem as Problem {
            throw problem
        } catch let error as ClientError {
            // A client call a route made: its kind decides the status (the table in docs/api.md).
            var problem = Problem(HTTPResponse.Status(code: error.httpStatus), error.kind.problemType, error.description)
            if let after = error.retryAfter { problem.headers[.retryAfter] = String(max(1, after.components.seconds + (after.components.attoseconds > 0 ? 1 : 0))) }
            throw problem
        } catch let error as HTTPError {
            switch error.status {
            case .notFound: throw Problem(.notFound, .notFound, "no route \(request.method.rawValue) \(request.uri.path)\(idEncodingHint(request.uri.path))")
            case .contentTooLarge: throw Problem(.contentTooLarge, .tooLarge, "the body is larger than \(ServerLimits.maxBody) bytes")
            default: throw Problem(error.status, .http, error.body)
            }
        } catch is NIOTooManyBytesError {
            throw Problem(.contentTooLarge, .tooLarge, "the body is larger than \(ServerLimits.maxBody) bytes")
        } catch let error as HTTPParserError {
            context.logger.debug("request body unreadable", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            throw Problem.badRequest("the request's body is not valid HTTP/1.1 or ended before its declared length (\(error))")
        } catch let error as ChannelError where [.ioOnClosedChannel, .eof, .inputClosed, .outputClosed, .alreadyClosed].contains(error) {
            // The client went (or was cut off by a timeout) while its body was read; nobody is left to answer.
            context.logger.debug("request body cut short", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            throw Problem.badRequest("the connection closed before the request's body was read")
        } catch let error as any HTTPResponseError {
            throw Problem(error.status, .http, nil)
        } catch {
            context.logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            throw Problem(.internalServerError, .internal, "\(error)")
        }
    }
}

/// A path that routes of other methods match, but none of the request's: a 405 that says which methods are
/// allowed (in `Allow`), instead of Hummingbird's 404. Added to the router last, so that it wraps only the
/// answer for an unmatched request.
struct MethodNotAllowedMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: [(path: RouterPath, method: HTTPRequest.Method)]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let allowed = Self.allowed(request.uri.path, routes: routes)
        if !allowed.isEmpty, !allowed.contains(request.method) {
            let names = allowed.map(\.rawValue).joined(separator: ", ")
            var problem = Problem(.methodNotAllowed, .methodNotAllowed, "\(request.uri.path) answers \(names), not \(request.method.rawValue)")
            problem.headers[.allow] = names
            throw problem
        }
        return try await next(request, context)
    }

    /// The methods of the routes that match `path` (HEAD wherever GET is), in a stable order.
    static func allowed(_ path: String, routes: [(path: RouterPath, method: HTTPRequest.Method)]) -> [HTTPRequest.Method] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        var methods = Set<String>()
        for route in routes where route.path.components.count == segments.count && zip(route.path.components, segments).allSatisfy({ $0 ~= $1 }) {
            methods.insert(route.method.rawValue)
            if route.method == .get { methods.insert(HTTPRequest.Method.head.rawValue) }
        }
        return methods.sorted().compactMap { HTTPRequest.Method($0) }
    }
}

/// Refuses, before any handler runs, what no handler accepts: a declared body over 1 MiB (413), and a body
/// that is not JSON (415) on `/v1` writes, except where YAML is accepted.
struct BodyGuardMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > ServerLimits.maxBody {
            throw Problem(.contentTooLarge, .tooLarge, "the body is \(length) bytes, more than \(ServerLimits.maxBody)")
        }
        let writes: Set<HTTPRequest.Method> = [.post, .put, .patch]
        let hasBody = (request.headers[.contentLength].flatMap { Int($0) } ?? 0) > 0 || request.headers[.transferEncoding] != nil
        if writes.contains(request.method), request.uri.path.hasPrefix("/v1/"), hasBody {
            let type = request.headers[.contentType].flatMap { MediaType(from: $0) }
            let yamlAllowed = request.uri.path == "/v1/definitions"
            let json = type?.isType(.applicationJson) == true
            let yaml = type.map { $0.type == .application && ($0.subType == "yaml" || $0.subType == "x-yaml") } == true
            if !(json || (yamlAllowed && yaml)) {
                let given = request.headers[.contentType] ?? "none"
                throw Problem(
                    .unsupportedMediaType, .unsupportedMediaType,
                    "the body must be application/json\(yamlAllowed ? " or application/yaml" : ""); the request says \(given)")
            }
        }
        return try await next(request, context)
    }
}

extension Request {
    /// The body as JSON of type `T`, or a 400 that says where the JSON is wrong (line and column) or which field
    /// is missing or of the wrong type.
    func decodeJSON<T: Decodable>(_ type: T.Type, context: ServerContext) async throws -> T {
        let data = try await bodyData(context: context)
        if data.isEmpty { throw Problem.badRequest("the body is empty; expected a JSON object") }
        return try Self.decode(T.self, from: data)
    }

    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try refuseNulls(in: data, keeping: (T.self as? any FreeFormFields.Type)?.freeFormFields ?? [])
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let error as DecodingError {
            throw Problem.badRequest(describe(error, in: data))
        }
    }

    /// A member that is `null` is refused (400 naming it) wherever it appears in a request body, except inside
    /// the members that hold free-form JSON (`keeping`): an optional member left out means "not given", and a
    /// `null` must not quietly mean the same (`{"filter":{"workflow":null}}` would otherwise widen a bulk action
    /// to every workflow).
    static func refuseNulls(in data: Data, keeping freeForm: Set<String>) throws {
        // Text that is not JSON is left to the decoder, whose message says where it is wrong.
        guard let json = try? JSON.parse(data) else { return }
        func walk(_ value: JSON, _ path: String) throws {
            guard case .object(let members) = value else { return }
            for (key, member) in members.sorted(by: { $0.key < $1.key }) where !(path.isEmpty && freeForm.contains(key)) {
                let name = path.isEmpty ? key : "\(path).\(key)"
                if case .null = member { throw Problem.badRequest("field '\(name)' is null; leave it out instead, or give a value") }
                try walk(member, name)
            }
        }
        try walk(json, "")
    }

    func bodyData(context: ServerContext) async throws -> Data {
        let buffer = try await body.collect(upTo: ServerLimits.maxBody)
        return Data(buffer.readableBytesView)
    }

    static func describe(_ error: DecodingError, in data: Data) -> String {
        switch error {
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return "malformed JSON: \(JSONPosition.describe(data))"
            }
            return "field '\(path(context.codingPath))': \(context.debugDescription)"
        case .keyNotFound(let key, let context):
            return "field '\(path(context.codingPath + [key]))' is missing"
        case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
            return "field '\(path(context.codingPath))' must be \(describe(type))"
        @unknown default:
            return "\(error)"
        }
    }

    static func path(_ keys: [any CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is Int.Type, is Int64.Type, is Double.Type: "a number"
        default: "\(type)".lowercased().contains("array") ? "an array" : "an object"
        }
    }
}

/// A request body with members that hold free-form JSON, where `null` is a value like any other.
protocol FreeFormFields {
    static var freeFormFields: Set<String> { get }
}

extension BatonService.StartRequest: FreeFormFields { static var freeFormFields: Set<String> { ["input"] } }
extension BatonService.ActionRequest: FreeFormFields { static var freeFormFields: Set<String> { ["output"] } }
extension BatonService.SignalRequest: FreeFormFields { static var freeFormFields: Set<String> { ["data"] } }
extension BatonService.DecisionRequest: FreeFormFields { static var freeFormFields: Set<String> { ["data"] } }

/// Where JSON text stops being valid: found by a small scanner, since Foundation's message has no position.
enum JSONPosition {
    static func describe(_ data: Data) -> String {
        let bytes = [UInt8](data)
        var i = 0
        var line = 1, column = 1
        func fail(_ what: String) -> String { "\(what) at line \(line), column \(column) (byte \(i + 1))" }
        func advance() {
            if bytes[i] == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
            i += 1
        }
        func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { advance() } }
        func value(_ depth: Int) -> String? {
            skipSpace()
            guard i < bytes.count else { return fail("the text ends where a value was expected") }
            guard depth < 512 else { return fail("nesting is too deep") }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                advance(); skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { advance(); return nil }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { return fail("expected a quoted key") }
                    if let e = string() { return e }
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return fail("expected ':' after a key") }
                    advance()
                    if let e = value(depth + 1) { return e }
                    skipSpace()
                    guard i < bytes.count else { return fail("the text ends inside an object") }
                    if bytes[i] == UInt8(ascii: ",") { advance(); continue }
                    if bytes[i] == UInt8(ascii: "}") { advance(); return nil }
                    return fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                advance(); skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { advance(); return nil }
                while true {
                    if let e = value(depth + 1) { return e }
                    skipSpace()
                    guard i < bytes.count else { return fail("the text ends inside an array") }
                    if bytes[i] == UInt8(ascii: ",") { advance(); continue }
                    if bytes[i] == UInt8(ascii: "]") { advance(); return nil }
                    return fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""): return string()
            default:
                let start = i
                while i < bytes.count, !([0x20, 0x09, 0x0A, 0x0D] + Array(",]}:".utf8)).contains(bytes[i]) { advance() }
                let word = String(decoding: bytes[start..<i], as: UTF8.self)
                if ["true", "false", "null"].contains(word) || Double(word) != nil { return nil }
                i = start
                let found = word.isEmpty ? String(decoding: [bytes[i]], as: UTF8.self) : String(word.prefix(20))
                return fail("unexpected '\(found)' where a value was expected")
            }
        }
        func string() -> String? {
            advance()
            while i < bytes.count {
                if bytes[i] == UInt8(ascii: "\\") { advance(); if i < bytes.count { advance() }; continue }
                if bytes[i] == UInt8(ascii: "\"") { advance(); return nil }
                if bytes[i] < 0x20 { return fail("a control character inside a string") }
                advance()
            }
            return fail("a string is not closed")
        }
        if let e = value(0) { return e }
        skipSpace()
        if i < bytes.count { return fail("unexpected text after the JSON value") }
        return "not valid JSON"
    }
}

/// Path parameters arrive percent-encoded; an id may hold any UTF-8 (a task id holds `/`: send it as `%2F`).
func pathID(_ context: ServerContext, _ name: String, what: String) throws -> String {
    guard let raw = context.parameters.get(name) else { throw Problem.badRequest("missing \(what)") }
    return try decodeID(raw, what: what)
}

/// A percent-encoded id from a path, decoded and checked.
func decodeID(_ raw: String, what: String) throws -> String {
    guard let decoded = raw.removingPercentEncoding else { throw Problem.badRequest("the \(what) is not valid UTF-8 once percent-decoded") }
    try checkID(decoded, what: what)
    return decoded
}

/// 1 to 200 bytes of UTF-8 without control characters: the wire's rule for ids (`InstanceID`).
func checkID(_ id: String, what: String) throws {
    do { try InstanceID.check(id, field: what) } catch { throw Problem.badRequest(error.reason) }
}

/// JSON responses with snake_case members as documented.
struct JSONBody: ResponseGenerator {
    let status: HTTPResponse.Status
    let data: Data
    var headers: HTTPFields = [:]

    init<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        self.data = (try? encoder.encode(value)) ?? Data("null".utf8)  // our own Encodable types do not fail to encode
        self.status = status
        self.headers = headers
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var h = headers
        h[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

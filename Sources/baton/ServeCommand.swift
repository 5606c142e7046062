import ArgumentParser
import AsyncHTTPClient
import BatonClient
import BatonCore
import BatonReadModel
import BatonRuntime
import BatonWire
import BatonServer
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the HTTP API (/v1) and the web console (/), over a read model of the engine's topics.",
        discussion: """
            Every /v1 call needs a principal: an API token or a person's password from the auth file (see `baton auth`), \
            or a JWT from your identity provider (--jwt-*). Roles: admin, operator, starter, and the task roles your \
            definitions name. See docs/api.md.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The address to listen on.") var host = "127.0.0.1"
    @Option(help: "The port to listen on (0: any free port, printed).") var port = 8080
    @Option(help: ArgumentHelp("The users and API tokens (default: $BATON_AUTH_FILE, else ./baton-auth.yaml).", valueName: "file"))
    var auth: String?
    @Option(help: ArgumentHelp("A file with the HS256 secret of your identity provider's JWTs.", valueName: "file")) var jwtSecretFile: String?
    @Option(help: ArgumentHelp("A PEM file with your identity provider's public key (ES256 or RS256).", valueName: "file")) var jwtPublicKeyFile: String?
    @Option(help: "The issuer (iss) JWTs must name.") var jwtIssuer: String?
    @Option(help: "The audience (aud) JWTs must name.") var jwtAudience: String?
    @Option(help: "The JWT claim with the roles: a name or a dotted path (realm_access.roles).") var rolesClaim = "roles"
    @Option(help: "The JWT claim that names the person.") var subjectClaim = "sub"
    @Option(help: ArgumentHelp("A file with the secret that signs console sessions (default: a new one per start: sessions end with the process).", valueName: "file"))
    var sessionKeyFile: String?
    @Option(help: ArgumentHelp("Seconds before a connection with no request in flight is closed (event streams are requests in flight).", valueName: "seconds"))
    var idleTimeout: Double = 60
    @Option(help: ArgumentHelp("Seconds a client has to send a request's head once it began (then 408).", valueName: "seconds"))
    var headerTimeout: Double = 10
    @Option(help: ArgumentHelp("Seconds a client has to send a request's body once its head arrived (then 408).", valueName: "seconds"))
    var bodyTimeout: Double = 30
    @Option(help: "Open connections at most: at the limit the connection idle longest is closed for a new one (lowered to fit the descriptor limit).")
    var maxConnections = 10_000
    @OptionGroup var monitoring: MonitoringOptions

    func run() async throws {
        let logger = connection.makeLogger("baton.serve", default: .notice)
        let authPath = auth ?? ProcessInfo.processInfo.environment["BATON_AUTH_FILE"] ?? "baton-auth.yaml"
        let file: AuthFile
        do { file = try AuthFile.load(authPath) } catch let error as AuthError { throw CLIFailure("\(error.description) (create it with `baton auth add-user`)") }
        var jwt: JWTSettings?
        if jwtSecretFile != nil || jwtPublicKeyFile != nil {
            var settings = JWTSettings()
            settings.hmacSecret = try jwtSecretFile.map { try readText($0, what: "--jwt-secret-file") }
            settings.publicKeyPEM = try jwtPublicKeyFile.map { try readText($0, what: "--jwt-public-key-file") }
            settings.issuer = jwtIssuer
            settings.audience = jwtAudience
            settings.rolesClaim = rolesClaim
            settings.subjectClaim = subjectClaim
            jwt = settings
        }
        let sessionSecret = try sessionKeyFile.map { try readText($0, what: "--session-key-file") } ?? UUID().uuidString + UUID().uuidString
        let authenticator: Authenticator
        do { authenticator = try await Authenticator(file: file, jwt: jwt, sessionSecret: sessionSecret) } catch let error as AuthError { throw CLIFailure(error.description) }
        let clientConfiguration = try connection.clientConfiguration
        let monitored = try monitoring.bootstrap(serviceName: "baton-serve", logger: logger)
        var settings = ReadModel.Settings()
        settings.gapRereads = connection.resolvedGapRereads
        let model = ReadModel(client: clientConfiguration, names: connection.names, settings: settings, logger: logger)
        let client = try BatonClient(client: clientConfiguration, names: connection.names, logger: logger)
        let signer: AuthoritySigner
        do { signer = try KeySettings.fromEnvironment().loadSigner() } catch { throw CLIFailure("\(error) (the server signs decisions and operator actions with it)") }
        if let bound = signer.boundTo { throw CLIFailure("the signing key '\(signer.keyID)' is \(bound.subject)'s own; the server needs a server key (`baton keys init`)") }
        let service = BatonService(model: model, client: client, auth: authenticator, signer: signer, logger: logger)
        var limits = EdgeLimits()
        for (name, seconds) in [("--idle-timeout", idleTimeout), ("--header-timeout", headerTimeout), ("--body-timeout", bodyTimeout)] where !(seconds > 0 && seconds <= 86_400) {
            throw CLIFailure("\(name): give seconds from more than 0 up to 86400; got \(seconds)")
        }
        guard maxConnections >= 1 else { throw CLIFailure("--max-connections: give at least 1; got \(maxConnections)") }
        limits.idleTimeout = .milliseconds(Int64(idleTimeout * 1000))
        limits.headerTimeout = .milliseconds(Int64(headerTimeout * 1000))
        limits.bodyTimeout = .milliseconds(Int64(bodyTimeout * 1000))
        limits.maxConnections = maxConnections
        let descriptors = BatonServer.raiseDescriptorLimit()
        if let fitted = limits.fitting(descriptors: descriptors) {
            logger.notice("--max-connections lowered to fit the descriptor limit", metadata: ["asked": "\(maxConnections)", "descriptors": "\(descriptors)", "max_connections": "\(fitted.maxConnections)"])
            limits = fitted
        }
        let server = BatonServer(service: service, host: host, port: port, limits: limits) { port in
            print("baton serve: http://\(host):\(port) (users: \(file.users.count), API tokens: \(file.tokens.count))")
            fflush(nil)  // every stream: a wrapper script waits for this line
        }
        do {
            let topics = try EngineTopicGuard(client: clientConfiguration, names: connection.names, role: .server, logger: logger)
            try await runServices(monitored.services(component: "server", ready: { model.isReady && topics.isSound }, main: [server]), topics: topics, logger: logger)
        } catch {
            await client.close()
            throw (error as? ReadModelError).map { CLIFailure($0.description) } ?? error
        }
        await client.close()
    }

    func readText(_ path: String, what: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw CLIFailure("\(what): cannot read \(path)") }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

struct AuthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "auth", abstract: "Manage the users and API tokens of `baton serve` (an auth file).", subcommands: [AddUser.self, AddToken.self])

    struct FileOption: ParsableArguments {
        @Option(help: ArgumentHelp("The auth file (default: $BATON_AUTH_FILE, else ./baton-auth.yaml); created when missing.", valueName: "file"))
        var file: String?
        var path: String { file ?? ProcessInfo.processInfo.environment["BATON_AUTH_FILE"] ?? "baton-auth.yaml" }
        func load() throws -> AuthFile {
            if !FileManager.default.fileExists(atPath: path) { return AuthFile() }
            do { return try AuthFile.load(path) } catch let error as AuthError { throw CLIFailure(error.description) }
        }
    }

    static func roles(_ text: String) throws -> [String] {
        let roles = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        for r in roles where r.hasPrefix("role:") { throw CLIFailure("--roles: name roles without 'role:' (credit_manager, not \(r))") }
        return roles
    }

    struct AddUser: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a person (or change their password and roles).")
        @OptionGroup var file: FileOption
        @Argument(help: "The name they sign in with.") var name: String
        @Option(help: "Their roles, comma-separated: admin, operator, starter, or task roles such as credit_manager.") var roles: String
        @Option(help: "The password (default: read from the first line of standard input).") var password: String?

        func run() async throws {
            var auth = try file.load()
            let secret = password ?? readLine(strippingNewline: true) ?? ""
            guard secret.count >= 8 else { throw CLIFailure("the password must have at least 8 characters") }
            let user = AuthFile.User(name: name, passwordHash: AuthFile.hashPassword(secret), roles: try AuthCommand.roles(roles))
            auth.users.removeAll { $0.name == name }
            auth.users.append(user)
            try auth.save(file.path)
            print("\(file.path): user \(name) with roles \(user.roles.joined(separator: ", "))")
        }
    }

    struct AddToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make an API token for a service or a script; prints it once (the file keeps its SHA-256).")
        @OptionGroup var file: FileOption
        @Argument(help: "Who the token acts as (recorded as the decider, the operator...).") var subject: String
        @Option(help: "Its roles, comma-separated.") var roles: String

        func run() async throws {
            var auth = try file.load()
            let (token, entry) = AuthFile.newToken(subject: subject, roles: try AuthCommand.roles(roles))
            auth.tokens.append(entry)
            try auth.save(file.path)
            print(token)
        }
    }
}

/// Options of commands that talk to `baton serve`.
struct ServerOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The Baton server, as http://host:port (default: $BATON_SERVER; without one, reads come straight from Kafka).", valueName: "url"))
    var server: String?
    @Option(help: ArgumentHelp("The API token or JWT to present (default: $BATON_TOKEN).", valueName: "token"))
    var token: String?

    var resolvedServer: String? { (server ?? ProcessInfo.processInfo.environment["BATON_SERVER"]).flatMap { $0.isEmpty ? nil : $0 } }
    var resolvedToken: String? { (token ?? ProcessInfo.processInfo.environment["BATON_TOKEN"]).flatMap { $0.isEmpty ? nil : $0 } }

    func api() throws -> APIClient? {
        guard let base = resolvedServer else { return nil }
        guard let token = resolvedToken else { throw CLIFailure("the server needs a token: --token or $BATON_TOKEN (make one with `baton auth add-token`)") }
        return APIClient(base: base.hasSuffix("/") ? String(base.dropLast()) : base, token: token)
    }
}

/// Calls `baton serve`'s API; a problem answer becomes the command's one-line error.
struct APIClient {
    let base: String
    let token: String

    func call(_ method: HTTPMethod, _ path: String, body: JSON? = nil) async throws -> (Int, JSON) {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body.encoded()))
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        } catch {
            throw CLIFailure("cannot reach the Baton server at \(base): \(error)")
        }
        let bytes = try await response.body.collect(upTo: 64 << 20)
        let json = (try? JSON.parse(Data(buffer: bytes))) ?? .null  // a body that is not JSON: reported by status below
        let status = Int(response.status.code)
        guard (200..<300).contains(status) else {
            let message = "\(method.rawValue) \(path): \(status) \(json["detail"]?.stringValue ?? json["title"]?.stringValue ?? response.status.reasonPhrase)"
            // The same exit status as the command without a server (docs/api.md, "Exit status").
            let code = json["type"]?.stringValue.flatMap { type in ProblemCode.allCases.first { $0.uri == type } }
            guard let kind = Self.kind(of: status, code) else { throw CLIFailure(message) }
            throw CLIFailure(ClientError(kind, message))
        }
        return (Int(response.status.code), json)
    }

    /// What a problem means to the command line: its code where that says more than its status.
    static func kind(of status: Int, _ code: ProblemCode?) -> ClientError.Kind? {
        if code == .unknownWorkflow { return .notFound }
        return switch status {
        case 400, 413, 415, 422: .invalid
        case 401, 403: .refused
        case 404: .notFound
        case 409: .conflict
        case 503: .unavailable
        default: nil
        }
    }

    static func escape(_ id: String) -> String { id.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? id }
}

extension ConnectionOptions {
    /// Runs `body` on a read model of the engine's topics, once it has caught up (for reads without a server).
    func withReadModel<T: Sendable>(_ body: @Sendable (ReadModel) async throws -> T) async throws -> T {
        var settings = ReadModel.Settings()
        settings.gapRereads = resolvedGapRereads
        let model = ReadModel(client: try clientConfiguration, names: names, settings: settings, logger: makeLogger("baton.read"))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await model.run()
                return nil
            }
            try await model.waitUntilReady(timeout: .seconds(120))
            let result = try await body(model)
            group.cancelAll()
            return result
        }
    }
}

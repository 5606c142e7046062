import BatonCore
import Crypto
import Foundation
import HummingbirdBcrypt
import JWTKit
import NIOPosix
import Yams

/// The people and services `baton serve` knows, from its auth file (YAML):
///
/// ```yaml
/// users:            # people who sign in to the console with a password (bcrypt hashes, `baton auth add-user`)
///   - { name: carol, password_hash: "$2b$12$...", roles: [credit_manager] }
/// tokens:           # services with API tokens (SHA-256 of the token, `baton auth add-token`)
///   - { id: shop, subject: shop-service, sha256: "9f86d0...", roles: [starter] }
/// ```
public struct AuthFile: Sendable, Codable, Hashable {
    public struct User: Sendable, Codable, Hashable {
        public var name: String
        public var passwordHash: String
        public var roles: [String]
        enum CodingKeys: String, CodingKey { case name, passwordHash = "password_hash", roles }
        public init(name: String, passwordHash: String, roles: [String]) {
            self.name = name
            self.passwordHash = passwordHash
            self.roles = roles
        }
    }
    public struct Token: Sendable, Codable, Hashable {
        /// The part before the dot of the token (`bt_<id>.<secret>`): finds the entry without trying every hash.
        public var id: String
        public var subject: String
        /// Hex SHA-256 of the whole token.
        public var sha256: String
        public var roles: [String]
        public init(id: String, subject: String, sha256: String, roles: [String]) {
            self.id = id
            self.subject = subject
            self.sha256 = sha256
            self.roles = roles
        }
    }
    public var users: [User] = []
    public var tokens: [Token] = []

    public init(users: [User] = [], tokens: [Token] = []) {
        self.users = users
        self.tokens = tokens
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        users = try c.decodeIfPresent([User].self, forKey: .users) ?? []
        tokens = try c.decodeIfPresent([Token].self, forKey: .tokens) ?? []
    }

    /// Reads and checks an auth file; the error names the file and what is wrong.
    public static func load(_ path: String) throws -> AuthFile {
        guard let data = FileManager.default.contents(atPath: path) else { throw AuthError("cannot read the auth file \(path)") }
        let text = String(decoding: data, as: UTF8.self)
        let file: AuthFile
        do {
            file = try YAMLDecoder().decode(AuthFile.self, from: text.isEmpty ? "{}" : text)
        } catch {
            throw AuthError("the auth file \(path) is not valid: \(error)")
        }
        try file.check(path)
        return file
    }

    func check(_ path: String) throws {
        var names = Set<String>()
        for (i, u) in users.enumerated() {
            guard !u.name.isEmpty else { throw AuthError("\(path): users[\(i)] has an empty name") }
            guard names.insert(u.name).inserted else { throw AuthError("\(path): user '\(u.name)' appears twice") }
            guard u.passwordHash.hasPrefix("$2a$") || u.passwordHash.hasPrefix("$2b$") || u.passwordHash.hasPrefix("$2y$") else {
                throw AuthError("\(path): users[\(i)] ('\(u.name)'): password_hash is not a bcrypt hash ($2b$...); make one with `baton auth add-user`")
            }
        }
        var ids = Set<String>()
        for (i, t) in tokens.enumerated() {
            guard ids.insert(t.id).inserted else { throw AuthError("\(path): token id '\(t.id)' appears twice") }
            guard t.sha256.count == 64, t.sha256.allSatisfy(\.isHexDigit) else {
                throw AuthError("\(path): tokens[\(i)] ('\(t.id)'): sha256 must be 64 hex digits")
            }
        }
    }

    public func save(_ path: String) throws {
        let text = try YAMLEncoder().encode(self)
        let header = "# Baton's users (bcrypt password hashes) and API tokens (SHA-256 of each token). See docs/api.md.\n"
        try Data((header + text).utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// A new API token for `subject`: the token to hand out (shown once) and its entry (what the file keeps).
    public static func newToken(subject: String, roles: [String]) -> (token: String, entry: Token) {
        let id = randomHex(bytes: 6)
        let token = "bt_\(id).\(randomHex(bytes: 24))"
        return (token, Token(id: id, subject: subject, sha256: sha256Hex(token), roles: roles))
    }

    public static func hashPassword(_ password: String) -> String { Bcrypt.hash(password, cost: 10) }
}

func randomHex(bytes: Int) -> String {
    var g = SystemRandomNumberGenerator()
    return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
}

func sha256Hex(_ text: String) -> String { SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined() }

public struct AuthError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// How bearer tokens from an identity provider are checked.
public struct JWTSettings: Sendable {
    /// A shared HS256 secret, or a PEM public key (ES256 or RS256).
    public var hmacSecret: String?
    public var publicKeyPEM: String?
    public var issuer: String?
    public var audience: String?
    /// The claim with the roles: a name, or a dotted path such as `realm_access.roles`. Its value is an array
    /// of strings or one space-separated string.
    public var rolesClaim = "roles"
    /// The claim that names the person.
    public var subjectClaim = "sub"
    public init() {}
}

/// The claims of a JWT, whatever they are: the server reads the ones its settings name.
struct AnyClaims: JWTPayload {
    var values: [String: JSON]
    init(_ values: [String: JSON]) { self.values = values }
    init(from decoder: any Decoder) throws { values = try decoder.singleValueContainer().decode([String: JSON].self) }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(values)
    }
    /// Expiry, not-before, issuer and audience are checked by `Authenticator`, which knows the settings.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Turns credentials into a principal: API tokens from the auth file, passwords of its users, JWTs from the
/// identity provider, and the console's own session tokens (JWTs the server signs itself).
public struct Authenticator: Sendable {
    let file: AuthFile
    let jwt: JWTSettings?
    let identityKeys: JWTKeyCollection?
    let sessionKeys: JWTKeyCollection
    /// How long a console session lasts.
    public let sessionLifetime: TimeInterval
    static let sessionIssuer = "baton-console"

    public init(file: AuthFile, jwt: JWTSettings?, sessionSecret: String, sessionLifetime: TimeInterval = 12 * 3600) async throws {
        self.file = file
        self.jwt = jwt
        self.sessionLifetime = sessionLifetime
        // HS256 keys shorter than the hash are weak (RFC 7518 §3.2) and jwt-kit refuses them.
        guard sessionSecret.utf8.count >= 32 else { throw AuthError("the session key must be at least 32 bytes; it is \(sessionSecret.utf8.count)") }
        if let secret = jwt?.hmacSecret, secret.utf8.count < 32 {
            throw AuthError("the JWT secret must be at least 32 bytes (RFC 7518 §3.2); it is \(secret.utf8.count)")
        }
        sessionKeys = JWTKeyCollection()
        await sessionKeys.add(hmac: HMACKey(from: sessionSecret), digestAlgorithm: .sha256, kid: "session")
        if let jwt {
            let keys = JWTKeyCollection()
            if let secret = jwt.hmacSecret {
                await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            } else if let pem = jwt.publicKeyPEM {
                if let key = try? ES256PublicKey(pem: pem) {
                    await keys.add(ecdsa: key)
                } else {
                    do {
                        await keys.add(rsa: try JWTKit.Insecure.RSA.PublicKey(pem: pem), digestAlgorithm: .sha256)
                    } catch {
                        throw AuthError("the JWT public key is neither an EC P-256 nor an RSA (2048 bits or more) public key in PEM: \(error)")
                    }
                }
            } else {
                throw AuthError("JWT settings need a secret or a public key")
            }
            identityKeys = keys
        } else {
            identityKeys = nil
        }
    }

    /// The principal of a bearer token (an API token, a JWT of the identity provider or a session token), or
    /// an error that says why it is refused.
    public func principal(bearer token: String) async throws -> Principal {
        if token.hasPrefix("bt_") { return try principal(apiToken: token) }
        if let session = try? await sessionPrincipal(token) { return session }  // not a session token: try the identity provider's keys
        guard let identityKeys, let jwt else { throw AuthError("the token is neither an API token nor a session of this server") }
        let claims: AnyClaims
        do {
            claims = try await identityKeys.verify(token, as: AnyClaims.self)
        } catch {
            throw AuthError("the token's signature does not verify: \(error)")
        }
        return try principal(claims.values, settings: jwt)
    }

    func principal(apiToken token: String) throws -> Principal {
        let body = token.dropFirst(3)
        guard let dot = body.firstIndex(of: ".") else { throw AuthError("malformed API token") }
        let id = String(body[..<dot])
        guard let entry = file.tokens.first(where: { $0.id == id }) else { throw AuthError("unknown API token") }
        // Both sides are hex of a SHA-256: compared in constant time.
        let given = Array(sha256Hex(token).utf8), stored = Array(entry.sha256.lowercased().utf8)
        guard given.count == stored.count, zip(given, stored).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else { throw AuthError("unknown API token") }
        return Principal(subject: entry.subject, roles: Set(entry.roles))
    }

    func principal(_ claims: [String: JSON], settings: JWTSettings) throws -> Principal {
        let now = Date().timeIntervalSince1970
        let leeway = 30.0
        guard let exp = claims["exp"]?.numberValue else { throw AuthError("the token has no expiry (exp)") }
        guard exp + leeway > now else { throw AuthError("the token expired") }
        if let nbf = claims["nbf"]?.numberValue, nbf - leeway > now { throw AuthError("the token is not valid yet (nbf)") }
        if let issuer = settings.issuer, claims["iss"]?.stringValue != issuer { throw AuthError("the token's issuer is not \(issuer)") }
        if let audience = settings.audience {
            let aud = claims["aud"]
            let audiences = aud?.arrayValue?.compactMap(\.stringValue) ?? aud?.stringValue.map { [$0] } ?? []
            guard audiences.contains(audience) else { throw AuthError("the token is not for audience \(audience)") }
        }
        guard let subject = claims[settings.subjectClaim]?.stringValue, !subject.isEmpty else {
            throw AuthError("the token has no '\(settings.subjectClaim)' claim")
        }
        var value: JSON? = .object(claims)
        for part in settings.rolesClaim.split(separator: ".") { value = value?[String(part)] }
        let roles = value?.arrayValue?.compactMap(\.stringValue) ?? value?.stringValue?.split(separator: " ").map(String.init) ?? []
        return Principal(subject: subject, roles: Set(roles))
    }

    /// Checks a user's password (bcrypt, off the cooperative threads); nil when the name or password is wrong.
    public func signIn(name: String, password: String) async -> Principal? {
        guard let user = file.users.first(where: { $0.name == name }) else {
            // Spend the same time as a real check, so that answers do not tell which names exist.
            _ = try? await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: Self.dummyHash) }  // the outcome is irrelevant
            return nil
        }
        let hash = user.passwordHash.hasPrefix("$2y$") ? "$2b$" + user.passwordHash.dropFirst(4) : user.passwordHash
        let ok = (try? await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: hash) }) ?? false  // a pool shutting down: refuse
        return ok ? Principal(subject: user.name, roles: Set(user.roles)) : nil
    }

    static let dummyHash = Bcrypt.hash("baton", cost: 10)

    /// A session token for the console (a JWT this server signs).
    public func session(for principal: Principal) async throws -> String {
        let claims = AnyClaims([
            "sub": .string(principal.subject), "roles": .array(principal.roles.sorted().map(JSON.string)), "iss": .string(Self.sessionIssuer),
            "exp": .number((Date().timeIntervalSince1970 + sessionLifetime).rounded()),
        ])
        return try await sessionKeys.sign(claims, kid: "session")
    }

    func sessionPrincipal(_ token: String) async throws -> Principal {
        let claims = try await sessionKeys.verify(token, as: AnyClaims.self)
        guard claims.values["iss"]?.stringValue == Self.sessionIssuer else { throw AuthError("not a session token") }
        var settings = JWTSettings()
        settings.issuer = Self.sessionIssuer
        return try principal(claims.values, settings: settings)
    }
}

import BatonCore
import Crypto
import Foundation

/// The proof that an authority record (a decision, a claim, an operator's action, a person's signal) comes from
/// a party allowed to send it: who acts, with which roles, until when, signed (Ed25519) by a key that the
/// coordinators trust. The signature covers the whole record: `AuthorityRecord.signingBytes`.
public struct AuthorityProof: Codable, Sendable, Hashable {
    /// The id of the signing key, as the coordinators' trusted keys name it.
    public var key: String
    /// Who acts (the record's `by`).
    public var principal: String
    /// The roles the principal held when the server authenticated it, sorted.
    public var roles: [String]
    /// Milliseconds since the epoch: a record appended to its topic later than this is refused (a replay).
    public var expiresAt: Int64
    /// Base64 of the Ed25519 signature.
    public var signature: String

    public init(key: String, principal: String, roles: [String], expiresAt: Int64, signature: String = "") {
        self.key = key
        self.principal = principal
        self.roles = roles
        self.expiresAt = expiresAt
        self.signature = signature
    }

    public var asPrincipal: Principal { Principal(subject: principal, roles: Set(roles)) }

    enum CodingKeys: String, CodingKey { case key, principal, roles, expiresAt = "expires_at", signature = "sig" }
}

/// A record that decides, claims, operates or speaks for a person. Such a record is applied only with a valid
/// `auth` whose principal is the record's `by`.
public protocol AuthorityRecord: Codable, Sendable {
    var auth: AuthorityProof? { get set }
    /// The person the record says acts.
    var actor: String? { get }
}

extension AuthorityRecord {
    /// The bytes the signature covers: a domain tag, then the record as `Wire.encode` writes it (keys sorted)
    /// with an empty signature. A reader that decoded the record computes the same bytes from what it read, so
    /// any field changed after signing (a decision turned around, another instance, a later expiry) fails.
    public var signingBytes: Data {
        var unsigned = self
        unsigned.auth?.signature = ""
        return Data("baton-authority-v1\n".utf8) + Wire.encode(unsigned)
    }
}

extension DecisionMessage: AuthorityRecord { public var actor: String? { by } }
extension ClaimMessage: AuthorityRecord { public var actor: String? { by } }
extension OperatorMessage: AuthorityRecord { public var actor: String? { by } }
extension SignalMessage: AuthorityRecord { public var actor: String? { by } }

/// Why an authority record is refused.
public struct AuthorityRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        /// No `auth` on a record that needs one.
        case unsigned
        /// A key the coordinators do not trust, or a signature that does not verify.
        case badSignature = "bad-signature"
        /// Appended after its `expires_at`: a captured record sent again.
        case expired
        /// Signed, but by a key that may not speak for that principal or role, or for someone else than `by`.
        case notAllowed = "not-allowed"
        /// The principal's roles do not give it the right (the task's role, operator, admin).
        case forbidden
        /// A result or heartbeat without its command's token, or with another.
        case badToken = "bad-token"
        /// A request the instance applied already, sent again.
        case replayed
    }

    public var code: Code
    public var reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(code.rawValue): \(reason)" }
}

/// An Ed25519 key that signs authority records: the server's (it signs for whoever it authenticated), or an
/// operator's own (bound to one principal and its roles, for the command line without a server).
///
/// The file (`baton keys generate`), YAML or JSON, to be kept secret:
/// ```yaml
/// id: server-2026-12
/// private_key: <base64 of the 32-byte Ed25519 private key>
/// principal: alice        # only in an operator's own key: it signs as alice,
/// roles: [operator]       # with these roles, and nothing else
/// ```
public struct AuthoritySigner: Sendable {
    public let keyID: String
    let key: Curve25519.Signing.PrivateKey
    /// An operator's own key: the one principal it signs as. Nil for a server's key.
    public let boundTo: Principal?
    /// How long a signed record may take to reach its topic (milliseconds).
    public var validity: Int64 = 5 * 60_000

    public init(keyID: String, key: Curve25519.Signing.PrivateKey, boundTo: Principal? = nil) {
        self.keyID = keyID
        self.key = key
        self.boundTo = boundTo
    }

    public var publicKey: Curve25519.Signing.PublicKey { key.publicKey }

    struct File: Codable {
        var id: String
        var privateKey: String
        var principal: String?
        var roles: [String]?
        enum CodingKeys: String, CodingKey { case id, privateKey = "private_key", principal, roles }
    }

    /// Reads a key file; the error names the file and what is wrong.
    public static func load(path: String) throws -> AuthoritySigner {
        let file = try KeyFiles.read(File.self, path: path, what: "signing key")
        // CryptoKit's error says only "incorrect size": the one thrown here names the file and the field.
        guard let raw = Data(base64Encoded: file.privateKey), let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw KeyFiles.Error(path: path, reason: "'private_key' is not the base64 of a 32-byte Ed25519 private key")
        }
        if file.principal == nil, file.roles != nil { throw KeyFiles.Error(path: path, reason: "'roles' needs 'principal' (an operator's own key)") }
        return AuthoritySigner(keyID: file.id, key: key, boundTo: file.principal.map { Principal(subject: $0, roles: Set(file.roles ?? [])) })
    }

    /// A new key file's text and the trusted-keys entry that goes with it.
    public static func generate(id: String, principal: Principal? = nil) -> (keyFile: String, trusted: TrustedKeys.Entry) {
        let key = Curve25519.Signing.PrivateKey()
        var text = "# A Baton signing key: keep it secret. Coordinators trust its public key (trusted keys, entry '\(id)').\n"
        text += "id: \"\(id)\"\nprivate_key: \"\(key.rawRepresentation.base64EncodedString())\"\n"
        if let principal {
            text += "principal: \(principal.subject)\nroles: [\(principal.roles.sorted().joined(separator: ", "))]\n"
        }
        let entry = TrustedKeys.Entry(
            id: id, publicKey: key.publicKey.rawRepresentation.base64EncodedString(),
            principals: principal.map { .only([$0.subject]) } ?? .any, roles: principal.map { .only($0.roles.sorted()) } ?? .any)
        return (text, entry)
    }

    /// The identity a record is signed as: the bound principal of an operator's key (which `as` must not
    /// contradict), else the principal the caller authenticated.
    public func identity(for requested: Principal?) throws -> Principal {
        if let boundTo {
            if let requested, requested.subject != boundTo.subject {
                throw AuthorityRefusal(.notAllowed, "the signing key '\(keyID)' is \(boundTo.subject)'s; it cannot act as \(requested.subject)")
            }
            return boundTo
        }
        guard let requested else { throw AuthorityRefusal(.notAllowed, "the signing key '\(keyID)' is a server's: name who acts") }
        return requested
    }

    /// Signs `record` as `principal` (its `by` must name the same person).
    public func sign<R: AuthorityRecord>(_ record: inout R, as principal: Principal, now: Int64) throws {
        guard record.actor == principal.subject else {
            throw AuthorityRefusal(.notAllowed, "the record names \(record.actor ?? "nobody") as acting, not \(principal.subject)")
        }
        record.auth = AuthorityProof(key: keyID, principal: principal.subject, roles: principal.roles.sorted(), expiresAt: now + validity)
        let signature = try key.signature(for: record.signingBytes).base64EncodedString()
        record.auth?.signature = signature
    }
}

/// The public keys coordinators trust for authority records, and whom each may speak for. Coordinators hold
/// public keys only: a coordinator's host that is broken into cannot sign anything.
///
/// The file (YAML or JSON):
/// ```yaml
/// keys:
///   - id: server-2026-12           # the server's key: it signs for whoever it authenticated
///     public_key: <base64 of the 32-byte Ed25519 public key>
///   - id: ops-alice                # an operator's own key: only as alice, only as an operator
///     public_key: <base64>
///     principals: [alice]
///     roles: [operator]
/// ```
/// Rotation: add the new key's entry here (every coordinator), then give the server the new key, then remove
/// the old entry once no record signed with it can still be in flight (its validity, 5 minutes by default).
public struct TrustedKeys: Sendable {
    public enum Scope: Sendable, Hashable, Codable {
        case any
        case only([String])

        func allows(_ value: String) -> Bool {
            switch self {
            case .any: true
            case .only(let values): values.contains(value)
            }
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let word = try? c.decode(String.self) {  // not a string: read as a list below, which names the error
                guard word == "any" else {
                    throw DecodingError.dataCorruptedError(in: c, debugDescription: "'\(word)': write 'any' or a list of names")
                }
                self = .any
            } else {
                self = .only(try c.decode([String].self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .any: try c.encode("any")
            case .only(let values): try c.encode(values)
            }
        }
    }

    public struct Entry: Codable, Sendable, Hashable {
        public var id: String
        public var publicKey: String
        public var principals: Scope?
        public var roles: Scope?
        enum CodingKeys: String, CodingKey { case id, publicKey = "public_key", principals, roles }

        public init(id: String, publicKey: String, principals: Scope = .any, roles: Scope = .any) {
            self.id = id
            self.publicKey = publicKey
            self.principals = principals
            self.roles = roles
        }

        /// The entry as a line of the YAML file (a list item under `keys:`).
        public var yaml: String {
            func scope(_ s: Scope?) -> String {
                switch s ?? .any {
                case .any: "any"
                case .only(let values): "[\(values.joined(separator: ", "))]"
                }
            }
            return "  - { id: \"\(id)\", public_key: \"\(publicKey)\", principals: \(scope(principals)), roles: \(scope(roles)) }\n"
        }
    }

    struct Key: Sendable {
        let key: Curve25519.Signing.PublicKey
        let principals: Scope
        let roles: Scope
    }

    let keys: [String: Key]

    /// No key: every authority record is refused.
    public static let none = TrustedKeys(keys: [:])

    init(keys: [String: Key]) { self.keys = keys }

    public init(entries: [Entry]) throws {
        var keys: [String: Key] = [:]
        for (i, e) in entries.enumerated() {
            guard !e.id.isEmpty else { throw AuthorityRefusal(.badSignature, "keys[\(i)]: 'id' is empty") }
            guard keys[e.id] == nil else { throw AuthorityRefusal(.badSignature, "keys[\(i)]: the id '\(e.id)' is listed twice") }
            // As for the private key: the error thrown here names the entry and the field.
            guard let raw = Data(base64Encoded: e.publicKey), let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
                throw AuthorityRefusal(.badSignature, "keys[\(i)] ('\(e.id)'): 'public_key' is not the base64 of a 32-byte Ed25519 public key")
            }
            keys[e.id] = Key(key: key, principals: e.principals ?? .any, roles: e.roles ?? .any)
        }
        self.keys = keys
    }

    struct File: Codable { var keys: [Entry] }

    /// Reads a trusted-keys file; the error names the file, the entry and what is wrong.
    public static func load(path: String) throws -> TrustedKeys {
        let file = try KeyFiles.read(File.self, path: path, what: "trusted keys")
        do { return try TrustedKeys(entries: file.keys) } catch let refusal as AuthorityRefusal {
            throw KeyFiles.Error(path: path, reason: refusal.reason)
        }
    }

    public var isEmpty: Bool { keys.isEmpty }
    public var ids: [String] { keys.keys.sorted() }

    /// How much later than its expiry a record may be appended: the server's and the broker's clocks may differ.
    public static let clockLeeway: Int64 = 30_000

    /// Checks a record's proof: a trusted key, a signature over exactly these bytes, appended (`appendedAt`, the
    /// record's timestamp) before it expired, a key allowed to speak for its principal and roles, and the
    /// principal the record names as acting. Returns the principal; what it may do is the caller's to decide.
    public func verify<R: AuthorityRecord>(_ record: R, appendedAt: Int64) -> Result<Principal, AuthorityRefusal> {
        guard let proof = record.auth else { return .failure(AuthorityRefusal(.unsigned, "the record has no 'auth': only signed records may act for a person")) }
        guard let trusted = keys[proof.key] else {
            return .failure(AuthorityRefusal(.badSignature, "signed with key '\(proof.key)', which the coordinators do not trust"))
        }
        guard let signature = Data(base64Encoded: proof.signature), trusted.key.isValidSignature(signature, for: record.signingBytes) else {
            return .failure(AuthorityRefusal(.badSignature, "the signature does not verify with key '\(proof.key)' (the record was changed, or not signed by it)"))
        }
        guard appendedAt <= proof.expiresAt + Self.clockLeeway else {
            return .failure(AuthorityRefusal(.expired, "appended at \(appendedAt), after its expiry at \(proof.expiresAt): a signed record sent again"))
        }
        guard trusted.principals.allows(proof.principal) else {
            return .failure(AuthorityRefusal(.notAllowed, "key '\(proof.key)' may not sign for \(proof.principal)"))
        }
        if let role = proof.roles.first(where: { !trusted.roles.allows($0) }) {
            return .failure(AuthorityRefusal(.notAllowed, "key '\(proof.key)' may not sign for the role \(role)"))
        }
        guard record.actor == proof.principal else {
            return .failure(AuthorityRefusal(.notAllowed, "signed for \(proof.principal), but the record names \(record.actor ?? "nobody") as acting"))
        }
        return .success(proof.asPrincipal)
    }
}

/// Reading the key files: YAML or JSON, errors that name the file.
enum KeyFiles {
    struct Error: Swift.Error, CustomStringConvertible {
        var path: String
        var reason: String
        var description: String { "\(path): \(reason)" }
    }

    static func read<T: Decodable>(_ type: T.Type, path: String, what: String) throws -> T {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw Error(path: path, reason: "cannot read the \(what) file: \(error.localizedDescription)")
        }
        do {
            let tree = try DefinitionLoader.parseDocument(data)
            return try JSONDecoder().decode(T.self, from: Data(tree.encoded()))
        } catch let error as DocumentError {
            throw Error(path: path, reason: "not a \(what) file: \(error)")
        } catch {
            throw Error(path: path, reason: "not a \(what) file: \(Wire.describe(error))")
        }
    }
}

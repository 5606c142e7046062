import BatonCore
import BatonWire
import Foundation

/// Where a process finds its keys (docs/operations.md#keys): each file named by its own variable, or all of
/// them in one folder made by `baton keys init` (`BATON_KEYS_DIR`):
///
/// | file | variable | who needs it |
/// | --- | --- | --- |
/// | `trusted-keys.yaml` | `BATON_TRUSTED_KEYS` | coordinators: the public keys that may sign authority records |
/// | `result.secret` | `BATON_RESULT_SECRET` | coordinators: the secret of the result tokens |
/// | `signing.key` | `BATON_SIGNING_KEY` | `baton serve` (or an operator's own key, for the command line) |
public struct KeySettings: Sendable, Hashable {
    public var trustedKeys: String?
    public var resultSecret: String?
    public var signingKey: String?

    public static let directoryVariable = "BATON_KEYS_DIR"
    public static let trustedKeysFile = "trusted-keys.yaml"
    public static let resultSecretFile = "result.secret"
    public static let signingKeyFile = "signing.key"

    public init(trustedKeys: String? = nil, resultSecret: String? = nil, signingKey: String? = nil) {
        self.trustedKeys = trustedKeys
        self.resultSecret = resultSecret
        self.signingKey = signingKey
    }

    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> KeySettings {
        func path(_ variable: String, _ file: String) -> String? {
            if let p = environment[variable], !p.isEmpty { return p }
            guard let dir = environment[directoryVariable], !dir.isEmpty else { return nil }
            return URL(fileURLWithPath: dir).appendingPathComponent(file).path
        }
        return KeySettings(
            trustedKeys: path("BATON_TRUSTED_KEYS", trustedKeysFile), resultSecret: path("BATON_RESULT_SECRET", resultSecretFile),
            signingKey: path("BATON_SIGNING_KEY", signingKeyFile))
    }

    func required(_ path: String?, _ what: String, variable: String, file: String) throws -> String {
        guard let path else {
            throw ClientSettingsError(
                source: variable,
                reason: "no \(what): set \(variable) to its file, or \(Self.directoryVariable) to a folder with \(file) (`baton keys init DIR` makes one)")
        }
        return path
    }

    public func loadTrustedKeys() throws -> TrustedKeys {
        let path = try required(trustedKeys, "trusted keys", variable: "BATON_TRUSTED_KEYS", file: Self.trustedKeysFile)
        return try TrustedKeys.load(path: path)
    }

    public func loadResultTokens() throws -> ResultTokens {
        let path = try required(resultSecret, "result secret", variable: "BATON_RESULT_SECRET", file: Self.resultSecretFile)
        return try ResultTokens.load(path: path)
    }

    /// What a coordinator needs: the trusted keys and the result secret; the error says what is missing.
    public func loadSecurity() throws -> CoordinatorSecurity {
        CoordinatorSecurity(trustedKeys: try loadTrustedKeys(), resultTokens: try loadResultTokens())
    }

    public func loadSigner() throws -> AuthoritySigner {
        let path = try required(signingKey, "signing key", variable: "BATON_SIGNING_KEY", file: Self.signingKeyFile)
        return try AuthoritySigner.load(path: path)
    }

    /// Whether a signing key is configured (the command line signs operator actions with it when no server is named).
    public var hasSigningKey: Bool { signingKey.map { FileManager.default.fileExists(atPath: $0) } ?? false }
}

/// A folder of keys for a namespace (`baton keys init`): the server's signing key, the trusted keys that list
/// its public key, and the result secret. Files that exist are kept, so running it again changes nothing.
public enum KeyDirectory {
    /// Creates what is missing in `directory`; returns the files it wrote.
    @discardableResult
    public static func initialize(_ directory: URL, serverKeyID: String = "server-\(Int(Date().timeIntervalSince1970))") throws -> [String] {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var written: [String] = []
        let signing = directory.appendingPathComponent(KeySettings.signingKeyFile)
        let trusted = directory.appendingPathComponent(KeySettings.trustedKeysFile)
        if !fm.fileExists(atPath: signing.path) {
            let (keyFile, entry) = AuthoritySigner.generate(id: serverKeyID)
            try write(keyFile, to: signing, secret: true)
            written.append(signing.path)
            try addTrusted(entry, to: trusted)
            written.append(trusted.path)
        }
        let secret = directory.appendingPathComponent(KeySettings.resultSecretFile)
        if !fm.fileExists(atPath: secret.path) {
            try write(ResultTokens.generateSecretFile(), to: secret, secret: true)
            written.append(secret.path)
        }
        return written
    }

    /// An operator's own key (bound to `principal`) in `directory`, and its entry in the trusted keys.
    public static func addOperatorKey(_ directory: URL, principal: Principal) throws -> URL {
        let file = directory.appendingPathComponent("operator-\(principal.subject).key")
        guard !FileManager.default.fileExists(atPath: file.path) else {
            throw ClientSettingsError(source: file.path, reason: "exists already; remove it and its entry in \(KeySettings.trustedKeysFile) to make a new one")
        }
        let (keyFile, entry) = AuthoritySigner.generate(id: "operator-\(principal.subject)-\(Int(Date().timeIntervalSince1970))", principal: principal)
        try write(keyFile, to: file, secret: true)
        try addTrusted(entry, to: directory.appendingPathComponent(KeySettings.trustedKeysFile))
        return file
    }

    static func addTrusted(_ entry: TrustedKeys.Entry, to file: URL) throws {
        var text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""  // no file yet: start one
        if text.isEmpty {
            text = "# Public keys that may sign authority records (decisions, claims, operator actions, signals), and whom for.\nkeys:\n"
        }
        text += entry.yaml
        try write(text, to: file, secret: false)
    }

    static func write(_ text: String, to file: URL, secret: Bool) throws {
        try Data(text.utf8).write(to: file, options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: secret ? 0o600 : 0o644], ofItemAtPath: file.path)
    }
}

import Crypto
import Foundation

/// The token of each attempt's command, which its results and heartbeats must echo: the first 16 bytes of an
/// HMAC-SHA256, under a secret the coordinators share, over the instance, step, item, attempt and whether it
/// is a compensation. A worker learns a token only from the command it was sent; with read access to its own
/// command topic only, it cannot complete, fail or keep alive another pool's step. Nothing is stored: any
/// coordinator that takes the partition computes the same token.
public struct ResultTokens: Sendable {
    let key: SymmetricKey

    /// At least 32 bytes of secret.
    public init(secret: Data) throws {
        guard secret.count >= 32 else { throw KeyFiles.Error(path: "result secret", reason: "\(secret.count) bytes; a result secret has at least 32") }
        key = SymmetricKey(data: secret)
    }

    /// Reads a secret file: the base64 of at least 32 random bytes (`baton keys init` writes one).
    public static func load(path: String) throws -> ResultTokens {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw KeyFiles.Error(path: path, reason: "cannot read the result secret: \(error.localizedDescription)")
        }
        let body = text.split(separator: "\n").filter { !$0.hasPrefix("#") }.joined().trimmingCharacters(in: .whitespaces)
        guard let secret = Data(base64Encoded: body) else { throw KeyFiles.Error(path: path, reason: "not base64 (the file holds the base64 of the secret)") }
        do { return try ResultTokens(secret: secret) } catch let error as KeyFiles.Error {
            throw KeyFiles.Error(path: path, reason: error.reason)
        }
    }

    /// A new secret file's text.
    public static func generateSecretFile() -> String {
        let secret = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        return "# Baton's result-token secret: every coordinator of the namespace has the same one. Keep it secret.\n\(secret.base64EncodedString())\n"
    }

    public func token(instanceID: String, step: String, item: Int?, attempt: Int, compensation: Bool) -> String {
        let text = "baton-result-v1\u{0}\(instanceID)\u{0}\(step)\u{0}\(item.map(String.init) ?? "-")\u{0}\(attempt)\u{0}\(compensation ? "c" : "s")"
        let mac = HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: key)
        return Data(mac.prefix(16)).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Whether `token` is the one of that attempt (compared in constant time).
    public func matches(_ token: String, instanceID: String, step: String, item: Int?, attempt: Int, compensation: Bool) -> Bool {
        let expected = Array(self.token(instanceID: instanceID, step: step, item: item, attempt: attempt, compensation: compensation).utf8)
        let given = Array(token.utf8)
        guard expected.count == given.count else { return false }
        var diff: UInt8 = 0
        for i in expected.indices { diff |= expected[i] ^ given[i] }
        return diff == 0
    }
}

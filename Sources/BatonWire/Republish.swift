import BatonCore
import Foundation

extension WireHeaders {
    /// On a record a dead letter was sent again as: who sent it again (the operator's subject), which dead
    /// letter it came from (`<partition>-<offset>` on the dead-letter topic), and when (ms since the epoch).
    /// Set by the server alone: whatever the dead letter carried under these names is dropped first.
    public static let republishedBy = "baton-republished-by"
    public static let republishedFrom = "baton-republished-from"
    public static let republishedAt = "baton-republished-at"
}

/// Why a dead letter cannot be sent again as asked; `status` says how the HTTP edge answers it.
public struct RepublishRefusal: Error, Sendable, CustomStringConvertible {
    public enum Status: Sendable { case badRequest, forbidden, conflict }
    public var status: Status
    public var reason: String
    public var description: String { reason }
    init(_ status: Status, _ reason: String) {
        self.status = status
        self.reason = reason
    }
}

/// What sending a dead letter again may write: the one rule of `POST /v1/deadletters/{id}/republish`, pure.
///
/// - Without a replacement (or with one equal to the original), the record goes back exactly as it was.
/// - Authority records (`task.decided`, `task.claimed`, `operator`, a `signal` naming a person with `by`) and
///   commands (anything on a `<ns>.commands.*` topic, so `reply_to` never changes) are never replaced (403).
/// - A replacement for a record of the events topic must decode as the coordinator decodes it
///   (`EventMessage.decode`), be the same kind of record as the original, and be for the same instance, which
///   is the record's key (400 otherwise). When the original does not decode (a malformed record the engine
///   refused), the replacement must decode as a non-authority record for the instance its key names, of the
///   original's kind when that still reads (`"kind":"step.completed"` with `"attempt":0` is fixed by a
///   `step.completed`; junk by any such record).
/// - Records of other topics have no decoder here: they only go back as they were.
public enum Republish {
    public struct Plan: Sendable, Hashable {
        /// The value to write (under the original key, to the original partition).
        public var value: Data
        /// Whether it is a replacement (then `kind` is its kind, for the `baton-kind` header).
        public var replaced: Bool
        public var kind: Wire.Kind?
    }

    /// Whether a record decides, claims, operates or signals on a person's behalf.
    public static func isAuthority(_ value: Data) -> Bool {
        guard let kind = try? Wire.kind(of: value) else { return false }  // not a record: it claims nothing
        switch kind {
        case .taskDecided, .taskClaimed, .operatorCommand: return true
        case .signal:
            // A signal that does not decode names no one; one that does may name a person.
            guard let signal = try? Wire.decode(SignalMessage.self, from: value) else { return false }
            return signal.by != nil
        default: return false
        }
    }

    public static func plan(
        topic: String, names: TopicNames, key: Data?, original: Data?, isWhole: Bool, replacement: JSON?
    ) throws(RepublishRefusal) -> Plan {
        let unchanged: Bool
        if let replacement {
            // The same record, however its JSON was written, is sent again as it was.
            unchanged = original.flatMap { try? JSON.parse($0) } == replacement  // an original that is not JSON differs from any replacement
        } else {
            unchanged = true
        }
        if unchanged {
            guard let original, isWhole else {
                throw RepublishRefusal(.conflict, "the dead letter kept only part of its value (or none); send a 'value' to publish in its place")
            }
            return Plan(value: original, replaced: false, kind: nil)
        }
        let bytes = replacement?.encoded() ?? Data()
        if topic.hasPrefix(names.commands("")) {
            throw RepublishRefusal(
                .forbidden, "the dead letter is a command (from \(topic)): commands are only sent again as they were, never replaced (nor their reply_to)")
        }
        guard topic == names.events else {
            throw RepublishRefusal(.badRequest, "records of \(topic) are only sent again as they were: a replacement is accepted for \(names.events) alone")
        }
        if isAuthority(bytes) {
            let kind = (try? Wire.kind(of: bytes))?.rawValue ?? "?"  // an authority record has a kind
            throw RepublishRefusal(
                .forbidden, "the replacement is a '\(kind)' record that acts as a person: authority records are only sent again as they were, never written here")
        }
        let decoded: EventMessage
        do { decoded = try EventMessage.decode(bytes) } catch {
            throw RepublishRefusal(.badRequest, "the replacement is not a record the coordinator accepts: \(error.reason)")
        }
        let kind = (try? Wire.kind(of: bytes)) ?? .start  // decoded, so it has a kind
        guard let key, let keyText = String(data: key, encoding: .utf8) else {
            throw RepublishRefusal(.badRequest, "the dead letter has no key naming an instance; it can only be sent again as it was")
        }
        guard decoded.instanceID == keyText else {
            throw RepublishRefusal(.badRequest, "the replacement is for '\(decoded.instanceID)', but the dead letter's key is '\(keyText)': it must be for the same instance")
        }
        guard let original, isWhole else { return Plan(value: bytes, replaced: true, kind: kind) }
        if isAuthority(original) {
            throw RepublishRefusal(.forbidden, "the dead letter is a record that acts as a person: it is only sent again as it was, never replaced")
        }
        // A malformed original whose kind still reads is fixed by a record of that kind; one without a kind
        // (not JSON, no known `kind`) by any record the checks above let through.
        if let wasKind = try? Wire.kind(of: original), wasKind != kind {
            throw RepublishRefusal(.badRequest, "the replacement is a '\(kind.rawValue)' record; the dead letter is a '\(wasKind.rawValue)' record: it must be the same kind")
        }
        if let was = try? EventMessage.decode(original), was.instanceID != decoded.instanceID {  // an original that does not decode is for its key's instance (checked above)
            throw RepublishRefusal(.badRequest, "the replacement is for '\(decoded.instanceID)'; the dead letter is for '\(was.instanceID)': it must be for the same instance")
        }
        return Plan(value: bytes, replaced: true, kind: kind)
    }
}

import BatonRecords
import Foundation

/// Why a record went to the dead-letter topic, in a few words (a bounded label).
public enum DeadLetterReason: String, Sendable, CaseIterable {
    case unreadable
    case unknownInstance = "unknown_instance"
    case unknownWorkflow = "unknown_workflow"
    case unknownStep = "unknown_step"
    case conflict
    case wrongPartition = "wrong_partition"
    case notACommand = "not_a_command"
    /// An authority record without a signature.
    case unsigned
    /// Signed by a key the coordinators do not trust, or the signature does not verify.
    case badSignature = "bad_signature"
    /// A signed record appended after it expired: sent again.
    case expired
    /// Signed, but its principal may not do what it asks (the task's role, operator, admin; the key's limits).
    case forbidden
    /// A result or heartbeat without its command's token, or with another.
    case badToken = "bad_token"
    /// A signed request the instance applied already, sent again.
    case replayed

    public init(_ code: AuthorityRefusal.Code) {
        switch code {
        case .unsigned: self = .unsigned
        case .badSignature: self = .badSignature
        case .expired: self = .expired
        case .notAllowed, .forbidden: self = .forbidden
        case .badToken: self = .badToken
        case .replayed: self = .replayed
        }
    }
}

/// The dead letter for a record a consumer cannot use (see `WireHeaders.deadLetter`): `code` says why for
/// programs (`baton-dlq-code`), `reason` for people.
public func deadLetterRecord(_ m: KafkaMessage, code: DeadLetterReason, reason: String, topic: String) -> ProducerRecord {
    let letter = WireHeaders.deadLetter(
        topic: topic, key: m.key, value: m.value, headers: m.headers.map { ($0.key, $0.value) }, code: code.rawValue, reason: reason, source: m.topic,
        partition: m.partition, offset: m.offset)
    return ProducerRecord(topic: topic, key: letter.key, value: letter.value, headers: letter.headers.map { KafkaHeader(key: $0.key, value: $0.value) })
}

extension Wire {
    /// The headers every Baton record carries: its kind and the protocol version.
    public static func headers(_ kind: Kind) -> [KafkaHeader] {
        [KafkaHeader(key: WireHeaders.kind, string: kind.rawValue), KafkaHeader(key: WireHeaders.version, string: String(version))]
    }
}

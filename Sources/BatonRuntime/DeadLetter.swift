import BatonKafka
import BatonWire

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

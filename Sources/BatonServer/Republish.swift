import BatonClient
import BatonCore
import BatonKafka
import BatonReadModel
import BatonWire
import Foundation
import Logging
import Metrics

extension BatonService {
    /// Sends a dead letter's record again to where it came from (its topic, partition and key, its own
    /// headers), or `value` in its place where `Republish.plan` allows one: never for authority records or
    /// commands. Only records from this namespace's topics go back. Every republish is audited: the record
    /// carries who sent it again and from which dead letter (`WireHeaders.republished*`), it is logged at
    /// notice level, and `baton_deadletters_republished_total` counts it.
    func republish(_ id: String, value: JSON?, by principal: Principal) async throws -> DeliveryReport {
        guard let entry = model.deadLetter(id) else { throw Problem.notFound("no dead letter '\(id)' among the latest kept") }
        guard let topic = entry.sourceTopic, let partition = entry.sourcePartition else {
            throw Problem.conflict("dead letter '\(id)' does not say where it came from")
        }
        let prefix = model.names.namespace.isEmpty ? "" : model.names.namespace + "."
        guard topic.hasPrefix(prefix), topic != model.names.deadletter else { throw Problem.conflict("dead letter '\(id)' came from \(topic), not an engine topic of this namespace") }
        let plan: Republish.Plan
        do {
            plan = try Republish.plan(topic: topic, names: model.names, key: entry.key, original: entry.value, isWhole: entry.isWhole, replacement: value)
        } catch {
            Self.republished("refused").increment()
            logger.notice(
                "republish of a dead letter refused",
                metadata: ["dead_letter": "\(id)", "by": "\(principal.subject)", "topic": "\(topic)", "reason": "\(error.reason)"])
            switch error.status {
            case .badRequest: throw Problem.badRequest("dead letter '\(id)': \(error.reason)")
            case .forbidden: throw Problem.forbidden("dead letter '\(id)': \(error.reason)")
            case .conflict: throw Problem.conflict("dead letter '\(id)': \(error.reason)")
            }
        }
        let audit: Set<String> = [WireHeaders.republishedBy, WireHeaders.republishedFrom, WireHeaders.republishedAt]
        var headers = entry.headers.filter { !audit.contains($0.key) && !(plan.replaced && $0.key == WireHeaders.kind) }
        if let kind = plan.kind { headers.append(KafkaHeader(key: WireHeaders.kind, string: kind.rawValue)) }
        headers += [
            KafkaHeader(key: WireHeaders.republishedBy, string: principal.subject), KafkaHeader(key: WireHeaders.republishedFrom, string: id),
            KafkaHeader(key: WireHeaders.republishedAt, string: String(Self.now())),
        ]
        let report = try await client.produce(ProducerRecord(topic: topic, partition: partition, key: entry.key, value: plan.value, headers: headers))
        Self.republished(plan.replaced ? "replaced" : "as_is").increment()
        logger.notice(
            "dead letter sent again",
            metadata: [
                "dead_letter": "\(id)", "by": "\(principal.subject)", "replaced": "\(plan.replaced)",
                "to": "\(report.topicPartition.topic)/\(report.topicPartition.partition)@\(report.offset)",
            ])
        return report
    }

    /// Dead letters sent again (`as_is`, `replaced`) and republishes refused (`refused`).
    static func republished(_ outcome: String) -> Counter {
        Counter(label: "baton_deadletters_republished_total", dimensions: [("outcome", outcome)])
    }
}

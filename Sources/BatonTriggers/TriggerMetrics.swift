import BatonKafka
import BatonRuntime
import BatonWire
import CoreMetrics
import Metrics

/// The metrics of `baton triggers` (names and meaning: docs/observability.md). Made with the factory of the
/// configuration: the process's (`MetricsSystem.factory`) unless a test gives its own.
final class TriggerMetrics: Sendable {
    /// Records read, by topic and by what came of them (one record may count under `started` and `published`).
    let records: LabeledMetric<Counter>
    /// Starts written, by workflow.
    let starts: LabeledMetric<Counter>
    let transactions: LabeledMetric<Counter>
    /// From a batch taken to its transaction committed.
    let batch: CoreMetrics.Timer
    let deadLetters: DeadLetterMetrics
    let lag: ConsumerLag
    /// Alerts about the service itself (a partition that cannot commit), by severity.
    let alerts: LabeledMetric<Counter>

    static let outcomes = ["started", "published", "ignored", "dead_lettered"]

    init(group: String, factory: any MetricsFactory) {
        records = .counter("baton_triggers_records_total", labels: ["topic", "outcome"], factory: factory)
        starts = .counter("baton_triggers_starts_total", labels: ["workflow"], factory: factory)
        transactions = .counter("baton_triggers_transactions_total", labels: ["outcome"], factory: factory)
        batch = CoreMetrics.Timer(label: "baton_triggers_batch_seconds", dimensions: [], factory: factory)
        deadLetters = DeadLetterMetrics(source: "triggers", factory: factory)
        lag = ConsumerLag(group: group, factory: factory)
        alerts = .counter("baton_alerts_total", labels: ["severity"], factory: factory)
        for severity in ["warning", "critical"] { alerts(severity).increment(by: 0) }
        for outcome in ["committed", "aborted"] { transactions(outcome).increment(by: 0) }
        // The one reason a trigger dead-letters for, at 0 (as `DeadLetterMetrics` names the series).
        Counter(label: "baton_dead_letters_total", dimensions: [("source", "triggers"), ("reason", DeadLetterReason.unreadable.rawValue)], factory: factory).increment(by: 0)
    }

    /// Every outcome's series of a topic at 0 the first time the topic is read, and every workflow's starts.
    func prepare(_ plan: TriggerPlan) {
        for (topic, readers) in plan.topics {
            for outcome in Self.outcomes { records(topic, outcome).increment(by: 0) }
            for trigger in readers.triggers { starts(trigger.workflowID).increment(by: 0) }
        }
    }
}

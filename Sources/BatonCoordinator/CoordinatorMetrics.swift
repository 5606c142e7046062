import BatonCore
import BatonKafka
import BatonPlanning
import BatonRuntime
import CoreMetrics
import Foundation
import Metrics
import Synchronization

/// The coordinator's metrics (names and meaning: docs/observability.md). Made with the factory of the
/// configuration: the process's (`MetricsSystem.factory`) unless a test gives its own.
final class CoordinatorMetrics: Sendable {
    let started: LabeledMetric<Counter>
    let finished: LabeledMetric<Counter>
    let suspended: LabeledMetric<Counter>
    let instances: LabeledMetric<Meter>
    let instanceDuration: LabeledMetric<CoreMetrics.Timer>
    let stepAttempts: LabeledMetric<Counter>
    let stepDuration: LabeledMetric<CoreMetrics.Timer>
    let compensations: LabeledMetric<Counter>
    let tasks: LabeledMetric<Counter>
    let alerts: LabeledMetric<Counter>
    let events: LabeledMetric<Counter>
    let deadLetters: DeadLetterMetrics
    let batchEvents: Recorder
    let transaction: LabeledMetric<CoreMetrics.Timer>
    /// From an event written (its record's timestamp) to its coordinator fetching it, and to its batch starting.
    let eventWait: LabeledMetric<CoreMetrics.Timer>
    let transactions: LabeledMetric<Counter>
    let rebalances: LabeledMetric<Counter>
    let partitionsOwned: Meter
    let rebuildDuration: CoreMetrics.Timer
    let rebuildRecords: Counter
    let timers: LabeledMetric<Gauge>
    let lag: ConsumerLag
    /// Records from business topics in mailboxes: delivered to a waiting attempt, dropped unused, given back.
    let mailboxRecords: LabeledMetric<Counter>

    init(group: String, factory: any MetricsFactory) {
        started = .counter("baton_instances_started_total", labels: ["workflow"], factory: factory)
        finished = .counter("baton_instances_finished_total", labels: ["workflow", "outcome"], factory: factory)
        suspended = .counter("baton_instances_suspended_total", labels: ["workflow", "reason"], factory: factory)
        instances = .meter("baton_instances", labels: ["workflow", "status"], factory: factory)
        instanceDuration = .timer("baton_instance_duration_seconds", labels: ["workflow"], factory: factory)
        stepAttempts = .counter("baton_step_attempts_total", labels: ["workflow", "step", "outcome"], factory: factory)
        stepDuration = .timer("baton_step_duration_seconds", labels: ["workflow", "step"], factory: factory)
        compensations = .counter("baton_compensations_total", labels: ["workflow", "step", "outcome"], factory: factory)
        tasks = .counter("baton_tasks_total", labels: ["workflow", "step", "outcome"], factory: factory)
        alerts = .counter("baton_alerts_total", labels: ["severity"], factory: factory)
        events = .counter("baton_coordinator_events_total", labels: ["result"], factory: factory)
        deadLetters = DeadLetterMetrics(source: "coordinator", factory: factory)
        batchEvents = Recorder(label: "baton_coordinator_batch_events", dimensions: [], aggregate: true, factory: factory)
        transaction = .timer("baton_coordinator_transaction_seconds", labels: ["phase"], factory: factory)
        eventWait = .timer("baton_coordinator_event_wait_seconds", labels: ["stage"], factory: factory)
        transactions = .counter("baton_coordinator_transactions_total", labels: ["result"], factory: factory)
        rebalances = .counter("baton_coordinator_rebalances_total", labels: ["change"], factory: factory)
        partitionsOwned = Meter(label: "baton_coordinator_partitions_owned", dimensions: [], factory: factory)
        rebuildDuration = CoreMetrics.Timer(label: "baton_coordinator_rebuild_seconds", dimensions: [], factory: factory)
        rebuildRecords = Counter(label: "baton_coordinator_rebuild_records_total", dimensions: [], factory: factory)
        timers = .gauge("baton_coordinator_timers", labels: ["partition"], factory: factory)
        lag = ConsumerLag(group: group, factory: factory)
        mailboxRecords = .counter("baton_mailbox_records_total", labels: ["outcome"], factory: factory)
        for outcome in ["delivered", "dropped", "returned"] { mailboxRecords(outcome).increment(by: 0) }
        // Series that alerts and dashboards expect to exist before anything happens.
        for result in ["committed", "aborted"] { transactions(result).increment(by: 0) }
        for result in ["applied", "ignored", "dead_lettered"] { events(result).increment(by: 0) }
        for change in ["assigned", "revoked"] { rebalances(change).increment(by: 0) }
        for severity in ["warning", "error", "critical"] { alerts(severity).increment(by: 0) }
        deadLetters.prepare()
        partitionsOwned.set(0)
    }

    /// Workflows and steps whose series exist already.
    private let prepared = Mutex<Set<[String]>>([])

    /// Makes every outcome's series of a workflow (or one of its steps) at 0 the first time it is seen, so that
    /// the first failure shows as an increase (`rate`, `increase` and the alerts see nothing in a series that
    /// appears already at 1).
    func prepare(workflow: String, step: String? = nil) {
        let key = [workflow] + (step.map { [$0] } ?? [])
        guard prepared.withLock({ $0.insert(key).inserted }) else { return }
        if let step {
            for outcome in ["completed", "failed", "retried", "timed_out"] { stepAttempts(workflow, step, outcome).increment(by: 0) }
            for outcome in ["completed", "failed"] { compensations(workflow, step, outcome).increment(by: 0) }
        } else {
            started(workflow).increment(by: 0)
            for outcome in ["completed", "failed", "compensated", "cancelled"] { finished(workflow, outcome).increment(by: 0) }
            for reason in ["failure", "compensation_failed"] { suspended(workflow, reason).increment(by: 0) }
        }
    }

    /// An instance's status counted under its workflow (the gauge of instances held).
    func count(_ state: InstanceState, by delta: Double) { count(workflowID: state.workflowID, status: state.status, by: delta) }

    func count(workflowID: String, status: InstanceStatus, by delta: Double) {
        let meter = instances(workflowID, status.rawValue)
        if delta > 0 { meter.increment(by: delta) } else { meter.decrement(by: -delta) }
    }
}

extension BatchObservations {
    /// Counts what the batch did once it committed; moves what it sent and answered into `dispatches`.
    func record(into metrics: CoordinatorMetrics, dispatches: inout Dispatches) {
        for key in answered { dispatches.sentAt[key] = nil }
        for (key, at) in sent { dispatches.sent(key, at: at) }
        for workflow in started {
            metrics.prepare(workflow: workflow)
            metrics.started(workflow).increment()
        }
        for (before, after) in statusChanges {
            if let state = after ?? before { metrics.prepare(workflow: state.workflowID) }
        }
        for a in attempts { metrics.prepare(workflow: a.workflow, step: a.step) }
        for c in compensations { metrics.prepare(workflow: c.workflow, step: c.step) }
        for (before, after) in statusChanges {
            if let before { metrics.count(before, by: -1) }
            guard let after else { continue }
            metrics.count(after, by: 1)
            if after.status.isFinished, before?.status.isFinished != true {
                let outcome: String =
                    switch after.status {
                    case .failed: after.steps.contains { $0.units.contains { $0.compensation == .done } } ? "compensated" : "failed"
                    default: after.status.rawValue
                    }
                metrics.finished(after.workflowID, outcome).increment()
                if let end = after.finishedAt {
                    metrics.instanceDuration(after.workflowID).recordMilliseconds(max(0, end - after.startedAt))
                }
            }
            if after.status == .suspended {
                metrics.suspended(after.workflowID, after.suspension == .compensationFailed ? "compensation_failed" : "failure").increment()
            }
        }
        for a in attempts {
            metrics.stepAttempts(a.workflow, a.step, a.outcome.rawValue).increment()
            if let d = a.duration { metrics.stepDuration(a.workflow, a.step).record(duration: d) }
        }
        for c in compensations { metrics.compensations(c.workflow, c.step, c.completed ? "completed" : "failed").increment() }
        for t in tasks { metrics.tasks(t.workflow, t.step, t.outcome).increment() }
        for s in alerts { metrics.alerts(s.rawValue).increment() }
        if applied > 0 { metrics.events("applied").increment(by: applied) }
        if ignored > 0 { metrics.events("ignored").increment(by: ignored) }
        if !deadLetters.isEmpty { metrics.events("dead_lettered").increment(by: deadLetters.count) }
        for reason in deadLetters { metrics.deadLetters.record(reason) }
    }}

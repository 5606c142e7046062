import BatonKafka
import BatonWire
import CoreMetrics
import Foundation
import Metrics
import Synchronization
import Tracing

/// Metrics of one name whose label values vary (a workflow, a step, an outcome): each label set's handle is
/// made once and reused, since a backend's lookup takes a lock and allocates. The label names are fixed at
/// creation and always given in the same order (Prometheus takes another order for another series).
public final class LabeledMetric<Handle: Sendable>: Sendable {
    public let name: String
    public let labels: [String]
    private let make: @Sendable (String, [(String, String)]) -> Handle
    private let handles = Mutex<[[String]: Handle]>([:])

    public init(_ name: String, labels: [String], make: @escaping @Sendable (String, [(String, String)]) -> Handle) {
        self.name = name
        self.labels = labels
        self.make = make
    }

    /// The handle for these label values, given in the order of `labels`.
    public func callAsFunction(_ values: String...) -> Handle { handle(values) }

    public func handle(_ values: [String]) -> Handle {
        precondition(values.count == labels.count, "\(name) takes the labels \(labels), given \(values)")
        if let h = handles.withLock({ $0[values] }) { return h }
        let h = make(name, Array(zip(labels, values)))
        return handles.withLock { cache in
            if let existing = cache[values] { return existing }
            cache[values] = h
            return h
        }
    }
}

extension LabeledMetric where Handle == Counter {
    public static func counter(_ name: String, labels: [String], factory: any MetricsFactory) -> LabeledMetric<Counter> {
        LabeledMetric(name, labels: labels) { Counter(label: $0, dimensions: $1, factory: factory) }
    }
}

extension LabeledMetric where Handle == Gauge {
    public static func gauge(_ name: String, labels: [String], factory: any MetricsFactory) -> LabeledMetric<Gauge> {
        LabeledMetric(name, labels: labels) { Gauge(label: $0, dimensions: $1, factory: factory) }
    }
}

extension LabeledMetric where Handle == Meter {
    public static func meter(_ name: String, labels: [String], factory: any MetricsFactory) -> LabeledMetric<Meter> {
        LabeledMetric(name, labels: labels) { Meter(label: $0, dimensions: $1, factory: factory) }
    }
}

extension LabeledMetric where Handle == CoreMetrics.Timer {
    public static func timer(_ name: String, labels: [String], factory: any MetricsFactory) -> LabeledMetric<CoreMetrics.Timer> {
        LabeledMetric(name, labels: labels) { CoreMetrics.Timer(label: $0, dimensions: $1, factory: factory) }
    }
}

/// Bucket bounds of the engine's histograms, for the backend that renders them (seconds).
public enum MetricBuckets {
    /// Step attempts and handlers: from a few milliseconds to minutes.
    public static let step: [Duration] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300].map { .milliseconds(Int64($0 * 1000)) }
    /// Whole instances: from 50 ms to two days (a human task waits up to 48 hours).
    public static let instance: [Duration] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 172_800].map {
        .milliseconds(Int64($0 * 1000))
    }
    /// Transactions and HTTP requests.
    public static let fast: [Duration] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10].map { .microseconds(Int64($0 * 1_000_000)) }
    /// Rebuilding a partition.
    public static let rebuild: [Duration] = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900].map { .milliseconds(Int64($0 * 1000)) }

    /// Duration histograms by metric name.
    public static let durations: [String: [Duration]] = [
        "baton_step_duration_seconds": step,
        "baton_worker_handler_seconds": step,
        "baton_worker_queue_wait_seconds": step,
        "baton_instance_duration_seconds": instance,
        "baton_coordinator_transaction_seconds": fast,
        "baton_http_request_duration_seconds": fast,
        "baton_coordinator_rebuild_seconds": rebuild,
        "baton_triggers_batch_seconds": fast,
    ]
    /// Value histograms by metric name.
    public static let values: [String: [Double]] = [
        "baton_coordinator_batch_events": [1, 2, 5, 10, 50, 100, 500, 1000, 2000]
    ]
}

/// Metrics every Baton process has: whether it is ready, and which version it runs.
public final class ProcessMetrics: Sendable {
    public static let version = "0.3.0"
    let ready: Gauge

    public init(component: String, factory: any MetricsFactory = MetricsSystem.factory) {
        ready = Gauge(label: "baton_ready", dimensions: [("component", component)], factory: factory)
        ready.record(0)
        Gauge(label: "baton_build_info", dimensions: [("version", Self.version)], factory: factory).record(1)
    }

    public func setReady(_ isReady: Bool) { ready.record(isReady ? 1 : 0) }
}

/// How far a consumer group's member is behind on the partitions it owns: the high watermark it last saw
/// minus the offset it will commit next.
public final class ConsumerLag: Sendable {
    let lag: LabeledMetric<Gauge>
    let group: String

    public init(group: String, factory: any MetricsFactory = MetricsSystem.factory) {
        self.group = group
        lag = .gauge("baton_consumer_lag", labels: ["group", "topic", "partition"], factory: factory)
    }

    public func record(_ partition: TopicPartition, lag value: Int64) {
        lag(group, partition.topic, String(partition.partition)).record(max(0, value))
    }

    /// The member gave the partition up: its lag is someone else's now.
    public func forget(_ partition: TopicPartition) {
        lag(group, partition.topic, String(partition.partition)).record(0)
    }
}

public final class DeadLetterMetrics: Sendable {
    let counter: LabeledMetric<Counter>
    let source: String
    public init(source: String, factory: any MetricsFactory = MetricsSystem.factory) {
        self.source = source
        counter = .counter("baton_dead_letters_total", labels: ["source", "reason"], factory: factory)
    }
    public func record(_ reason: DeadLetterReason) { counter(source, reason.rawValue).increment() }

    /// Every reason's series at 0, so that the first dead letter shows as an increase.
    public func prepare() { for reason in DeadLetterReason.allCases { counter(source, reason.rawValue).increment(by: 0) } }
}

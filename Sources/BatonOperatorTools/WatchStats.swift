import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Foundation

/// What `baton watch` shows, computed from the records it is fed and the times it is given (no I/O, no clock):
/// per workflow and step, steps started, completed, failed and compensated per second (over the last interval
/// and a moving window) and since the watch started; attempts in flight (a command sent, no result yet); step
/// times (a command's record timestamp to its result's) over the window; instances finished by outcome (from
/// state snapshots); records not yet consumed by each group (lag); the latest alerts.
///
/// Records written before the watch started (read to count what each group has not consumed yet) count for lag
/// only: attempts in flight are those whose command was sent since the watch started.
public struct WatchStats: Sendable {
    public struct Settings: Sendable, Hashable {
        /// The interval between frames: the first rate is over it. Milliseconds.
        public var interval: Int64 = 1000
        /// The moving window of the second rate and of the step times. Milliseconds.
        public var window: Int64 = 10_000
        /// How many of the latest alerts a frame lists.
        public var alerts = 5
        /// How many finished instances are remembered (so that a snapshot written again is not counted twice).
        public var rememberedFinished = 100_000
        public init() {}
    }

    /// What a record means to the watch.
    public enum Input: Sendable, Hashable {
        case start(StartMessage)
        case command(CommandMessage)
        case result(ResultMessage)
        /// A state snapshot, as read cheaply (`StateCodec.workflowAndStatus`).
        case state(instanceID: String, workflowID: String, status: InstanceStatus)
        /// A tombstone on the state topic: the instance's retention ended.
        case removed(instanceID: String)
        case alert(AlertRecord)
    }

    struct StepKey: Hashable {
        var workflow: String
        var step: String
    }

    struct AttemptKey: Hashable {
        var instance: String
        var step: String
        var item: Int?
        var attempt: Int
        var compensation: Bool
    }

    struct Attempt {
        var step: StepKey
        var sentAt: Int64
        var deadline: Int64
    }

    enum Counter: Int, CaseIterable { case started, completed, failed, compensated }

    struct Samples {
        /// When each step became known, for rows in the order steps were first seen.
        var order: Int
        /// Timestamps of recent events, by counter (oldest first; pruned to the window).
        var times: [[Int64]] = Array(repeating: [], count: Counter.allCases.count)
        var totals = Array(repeating: 0, count: Counter.allCases.count)
        /// Recent step times: when the result came, and how long since its command.
        var durations: [(at: Int64, millis: Int64)] = []
    }

    public let startedAt: Int64
    public var settings: Settings
    var steps: [StepKey: Samples] = [:]
    var workflowOf: [String: String] = [:]
    var inFlight: [AttemptKey: Attempt] = [:]
    /// Results read before their command (one consumer reads many partitions, in no order across them): when
    /// each came, and its kind when it is not counted yet (its instance's workflow was unknown), until its command comes.
    var early: [AttemptKey: (at: Int64, uncounted: Wire.Kind?)] = [:]
    var statuses: [String: InstanceStatus] = [:]
    var finishedOrder: [String] = []
    var started: [String: Int] = [:]
    var outcomes: [String: [InstanceStatus: Int]] = [:]
    var alerts: [WatchFrame.AlertLine] = []
    /// Lag: per tracked topic, its row's label; per partition, the offsets of records seen at or past the group's
    /// committed offset, and that offset.
    var lagLabels: [String: String] = [:]
    var unconsumed: [TopicPartition: [Int64]] = [:]
    var committed: [TopicPartition: Int64] = [:]

    public init(startedAt: Int64, settings: Settings = Settings()) {
        self.startedAt = startedAt
        self.settings = settings
    }

    // MARK: Feeding

    /// Reads what an engine record means to the watch; nil for records it does not count (heartbeats, tasks,
    /// anything it cannot decode: `baton tail` shows those).
    public static func input(_ m: KafkaMessage, names: TopicNames) -> Input? {
        // (`try?` throughout: a record the watch cannot read is not counted; the coordinators dead-letter it.)
        if m.topic == names.state {
            guard let id = m.keyString else { return nil }
            guard let value = m.value else { return .removed(instanceID: id) }
            return StateCodec.workflowAndStatus(value).map { .state(instanceID: id, workflowID: $0.workflowID, status: $0.status) }
        }
        guard let value = m.value, let kind = try? Wire.kind(of: value) else { return nil }
        switch kind {
        case .start: return (try? Wire.decode(StartMessage.self, from: value)).map(Input.start)
        case .stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed: return (try? Wire.decode(ResultMessage.self, from: value)).map(Input.result)
        case .stepCommand, .compensationCommand: return (try? Wire.decode(CommandMessage.self, from: value)).map(Input.command)
        case .alert: return (try? Wire.decode(AlertRecord.self, from: value)).map(Input.alert)
        default: return nil
        }
    }

    /// Counts the record toward its group's lag (when its topic is tracked) and feeds what it means.
    public mutating func ingest(_ m: KafkaMessage, names: TopicNames, now: Int64) {
        if lagLabels[m.topic] != nil, m.offset >= committed[m.topicPartition] ?? -1 {
            unconsumed[m.topicPartition, default: []].append(m.offset)
        }
        if let input = Self.input(m, names: names) { ingest(input, at: m.timestamp ?? now) }
    }

    /// Feeds what a record written at `at` (its timestamp, milliseconds) means.
    public mutating func ingest(_ input: Input, at: Int64) {
        let counts = at >= startedAt
        switch input {
        case .start(let s):
            workflowOf[s.instanceID] = s.workflowID
            if counts { started[s.workflowID, default: 0] += 1 }
        case .command(let c):
            workflowOf[c.instanceID] = c.workflowID
            // A command sent before the watch started counts for its group's lag only: its result may have come
            // before the watch started too (a worker commits a little after it answers).
            guard counts else { return }
            let step = StepKey(workflow: c.workflowID, step: c.step)
            let key = AttemptKey(instance: c.instanceID, step: c.step, item: c.item, attempt: c.attempt, compensation: c.isCompensation)
            touch(step)
            if !c.isCompensation { count(.started, step, at) }
            if let answered = early.removeValue(forKey: key) {
                if let kind = answered.uncounted { count(result: kind, step, answered.at) }
                if !c.isCompensation { record(duration: answered.at - at, of: step, at: answered.at) }
            } else {
                inFlight[key] = Attempt(step: step, sentAt: at, deadline: c.deadline)
            }
        case .result(let r):
            guard counts else { return }
            let compensation = r.kind == .compensationCompleted || r.kind == .compensationFailed
            let key = AttemptKey(instance: r.instanceID, step: r.step, item: r.item, attempt: r.attempt, compensation: compensation)
            if let sent = inFlight.removeValue(forKey: key) {
                count(result: r.kind, sent.step, at)
                if !compensation { record(duration: at - sent.sentAt, of: sent.step, at: at) }
            } else if let workflow = workflowOf[r.instanceID] {
                count(result: r.kind, StepKey(workflow: workflow, step: r.step), at)
                early[key] = (at, nil)
            } else {
                // Counted when its command names the workflow (or never, if the command was sent before the watch).
                early[key] = (at, r.kind)
            }
        case .state(let id, let workflow, let status):
            workflowOf[id] = workflow
            let previous = statuses[id]
            guard previous != status else { return }
            statuses[id] = status
            if counts, status.isFinished || status == .suspended { outcomes[workflow, default: [:]][status, default: 0] += 1 }
            if status.isFinished {
                // Nothing is in flight for a finished instance any more (a late result is ignored by the coordinator).
                inFlight = inFlight.filter { $0.key.instance != id }
                if previous?.isFinished != true { remember(finished: id) }
            }
        case .removed(let id):
            statuses[id] = nil
            workflowOf[id] = nil
        case .alert(let a):
            guard counts else { return }
            alerts.append(WatchFrame.AlertLine(at: a.at, severity: a.alert.severity, instanceID: a.alert.instanceID, step: a.alert.step, message: a.alert.message))
            if alerts.count > settings.alerts { alerts.removeFirst(alerts.count - settings.alerts) }
        }
    }

    /// Tracks the lag of a group that consumes `topic`, shown as `label`.
    public mutating func trackLag(of topic: String, as label: String) { lagLabels[topic] = label }

    /// The offsets a group committed (the next record it will read; negative when it committed none).
    public mutating func setCommitted(_ offsets: [TopicPartition: Int64]) {
        for (partition, offset) in offsets {
            committed[partition] = offset
            if let seen = unconsumed[partition], let first = seen.firstIndex(where: { $0 >= offset }) {
                unconsumed[partition] = Array(seen[first...])
            } else {
                unconsumed[partition] = nil
            }
        }
    }

    /// Forgets what is older than the window, and attempts whose deadline passed (the coordinator counts them
    /// timed out).
    public mutating func prune(now: Int64) {
        let horizon = now - max(settings.window, settings.interval)
        for key in Array(steps.keys) {
            guard var samples = steps[key] else { continue }
            samples.times = samples.times.map { times in Array(times.drop { $0 <= horizon }) }
            samples.durations.removeAll { $0.at <= horizon }
            steps[key] = samples
        }
        inFlight = inFlight.filter { $0.value.deadline >= now }
        early = early.filter { $0.value.at > horizon }
    }

    mutating func touch(_ step: StepKey) {
        if steps[step] == nil { steps[step] = Samples(order: steps.count) }
    }

    mutating func record(duration: Int64, of step: StepKey, at: Int64) {
        touch(step)
        steps[step]?.durations.append((at, max(0, duration)))
    }

    mutating func count(result kind: Wire.Kind, _ step: StepKey, _ at: Int64) {
        switch kind {
        case .stepCompleted: count(.completed, step, at)
        case .stepFailed: count(.failed, step, at)
        case .compensationCompleted: count(.compensated, step, at)
        default: touch(step)
        }
    }

    mutating func count(_ counter: Counter, _ step: StepKey, _ at: Int64) {
        touch(step)
        steps[step]?.times[counter.rawValue].append(at)
        steps[step]?.totals[counter.rawValue] += 1
    }

    mutating func remember(finished id: String) {
        finishedOrder.append(id)
        if finishedOrder.count > settings.rememberedFinished * 2 {
            let dropped = finishedOrder.count - settings.rememberedFinished
            for old in finishedOrder[..<dropped] where statuses[old]?.isFinished == true {
                statuses[old] = nil
                workflowOf[old] = nil
            }
            finishedOrder.removeFirst(dropped)
        }
    }

    // MARK: Reading

    /// The lag of a tracked topic: records seen at or past its group's committed offsets.
    public func lag(of topic: String) -> Int {
        unconsumed.filter { $0.key.topic == topic }.values.reduce(0) { $0 + $1.count }
    }

    /// Attempts in flight (commands without a result yet).
    public var inFlightCount: Int { inFlight.count }

    /// What the watch shows at `now`.
    public func frame(now: Int64) -> WatchFrame {
        var byWorkflow: [String: [(StepKey, Samples)]] = [:]
        for (key, samples) in steps { byWorkflow[key.workflow, default: []].append((key, samples)) }
        var inFlightBy: [StepKey: Int] = [:]
        for attempt in inFlight.values { inFlightBy[attempt.step, default: 0] += 1 }
        var rows: [WatchFrame.Row] = []
        for workflow in byWorkflow.keys.sorted() {
            let members = byWorkflow[workflow]!.sorted { $0.1.order < $1.1.order }
            let stepRows = members.map { key, samples in
                row(name: key.step, workflow: workflow, samples: [samples], inFlight: inFlightBy[key] ?? 0, now: now)
            }
            rows.append(row(name: workflow, workflow: nil, samples: members.map(\.1), inFlight: stepRows.reduce(0) { $0 + $1.inFlight }, now: now))
            rows += stepRows
        }
        let workflows = Set(started.keys).union(outcomes.keys).sorted()
        let instances = workflows.map { w in
            WatchFrame.InstanceRow(
                workflow: w, started: started[w] ?? 0, completed: outcomes[w]?[.completed] ?? 0, failed: outcomes[w]?[.failed] ?? 0,
                cancelled: outcomes[w]?[.cancelled] ?? 0, suspended: outcomes[w]?[.suspended] ?? 0)
        }
        let lagRows = lagLabels.sorted { ($0.value.hasPrefix("coordinators") ? 0 : 1, $0.value) < ($1.value.hasPrefix("coordinators") ? 0 : 1, $1.value) }
            .map { WatchFrame.LagRow(name: $0.value, topic: $0.key, records: lag(of: $0.key)) }
        return WatchFrame(
            at: now, startedAt: startedAt, interval: settings.interval, window: settings.window, rows: rows, instances: instances, lag: lagRows, alerts: alerts)
    }

    func row(name: String, workflow: String?, samples: [Samples], inFlight: Int, now: Int64) -> WatchFrame.Row {
        let elapsed = max(1, now - startedAt)
        func rate(_ counter: Counter) -> WatchFrame.Rate {
            let times = samples.flatMap { $0.times[counter.rawValue] }
            /// Events per second over the last `span` (over the time since the start, when that is shorter).
            func perSecond(_ span: Int64) -> Double {
                let within = span >= elapsed ? times.count : times.filter { $0 > now - span }.count
                return Double(within) * 1000 / Double(min(span, elapsed))
            }
            return WatchFrame.Rate(
                perSecond: perSecond(settings.interval), windowPerSecond: perSecond(settings.window),
                total: samples.reduce(0) { $0 + $1.totals[counter.rawValue] })
        }
        let durations = samples.flatMap { $0.durations }.filter { $0.at > now - settings.window }.map(\.millis).sorted()
        return WatchFrame.Row(
            name: name, workflow: workflow, started: rate(.started), completed: rate(.completed), failed: rate(.failed), compensated: rate(.compensated),
            inFlight: inFlight, p50: Self.percentile(durations, 0.50), p99: Self.percentile(durations, 0.99))
    }

    /// The nearest-rank percentile of sorted values (nil when there are none).
    public static func percentile(_ sorted: [Int64], _ p: Double) -> Int64? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((p * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count, max(1, rank)) - 1]
    }
}

/// One frame of `baton watch`.
public struct WatchFrame: Sendable, Hashable {
    /// Events per second over the last interval and over the window, and how many since the watch started.
    public struct Rate: Sendable, Hashable {
        public var perSecond: Double
        public var windowPerSecond: Double
        public var total: Int
    }

    /// A workflow (its steps summed; `workflow` nil) or one of its steps.
    public struct Row: Sendable, Hashable {
        public var name: String
        public var workflow: String?
        public var started: Rate
        public var completed: Rate
        public var failed: Rate
        public var compensated: Rate
        public var inFlight: Int
        /// Step times over the window, milliseconds.
        public var p50: Int64?
        public var p99: Int64?
    }

    /// Instances of a workflow started, and finished by outcome (suspended counts too), since the watch started.
    public struct InstanceRow: Sendable, Hashable {
        public var workflow: String
        public var started: Int
        public var completed: Int
        public var failed: Int
        public var cancelled: Int
        public var suspended: Int
    }

    public struct LagRow: Sendable, Hashable {
        public var name: String
        public var topic: String
        /// Records on the topic that the group has not consumed (committed past) yet.
        public var records: Int
    }

    public struct AlertLine: Sendable, Hashable {
        public var at: Int64
        public var severity: Alert.Severity
        public var instanceID: String?
        public var step: String?
        public var message: String
    }

    public var at: Int64
    public var startedAt: Int64
    public var interval: Int64
    public var window: Int64
    public var rows: [Row]
    public var instances: [InstanceRow]
    public var lag: [LagRow]
    public var alerts: [AlertLine]

    /// The frame as text: a table of workflows and their steps, instances finished, lag, alerts.
    public func render(namespace: String) -> String {
        let widest = (rows.map { $0.name.count + ($0.workflow == nil ? 0 : 2) } + lag.map { $0.name.count + 2 } + instances.map { $0.workflow.count + 2 }).max() ?? 0
        let nameWidth = max(28, widest) + 2
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
        func cell(_ r: Rate) -> String { "\(Self.decimal(r.perSecond))/\(Self.decimal(r.windowPerSecond))/\(r.total)" }
        let seconds = { (ms: Int64) in ms % 1000 == 0 ? "\(ms / 1000)s" : "\(Self.decimal(Double(ms) / 1000))s" }
        var lines = [
            "baton watch  \(namespace)  \(RecordFormatter.time(at))  (STARTED, COMPLETED, FAILED, COMPENSATED: per second over the last \(seconds(interval)) / the last \(seconds(window)) / since the watch started)",
            pad("WORKFLOW / STEP", nameWidth) + pad("STARTED", 15) + pad("COMPLETED", 15) + pad("FAILED", 15) + pad("COMPENSATED", 15) + pad("IN FLIGHT", 11)
                + pad("P50", 9) + "P99",
        ]
        if rows.isEmpty { lines.append("  (no steps started or finished since the watch started)") }
        for row in rows {
            let name = row.workflow == nil ? row.name : "  " + row.name
            lines.append(
                pad(name, nameWidth) + pad(cell(row.started), 15) + pad(cell(row.completed), 15) + pad(cell(row.failed), 15) + pad(cell(row.compensated), 15)
                    + pad(String(row.inFlight), 11) + pad(Self.duration(row.p50), 9) + Self.duration(row.p99))
        }
        lines.append("")
        lines.append("INSTANCES since the watch started")
        if instances.isEmpty { lines.append("  (none started or finished)") }
        for i in instances {
            lines.append(
                pad("  " + i.workflow, nameWidth) + "started \(i.started)  completed \(i.completed)  failed \(i.failed)  cancelled \(i.cancelled)  suspended \(i.suspended)")
        }
        lines.append("")
        lines.append("LAG (records not consumed yet)")
        for l in lag { lines.append(pad("  " + l.name, nameWidth) + String(l.records)) }
        lines.append("")
        lines.append("ALERTS")
        if alerts.isEmpty { lines.append("  (none since the watch started)") }
        for a in alerts {
            let about = [a.instanceID, a.step].compactMap { $0 }.joined(separator: " ")
            lines.append("  \(RecordFormatter.time(a.at))  \(a.severity.rawValue)  \(about.isEmpty ? "engine" : about)  \(a.message)")
        }
        return lines.joined(separator: "\n")
    }

    /// One decimal: 2.5, 0.0.
    static func decimal(_ x: Double) -> String {
        let tenths = Int((x * 10).rounded())
        return "\(tenths / 10).\(abs(tenths % 10))"
    }

    /// 850ms, 1.2s, or - when unknown.
    static func duration(_ millis: Int64?) -> String {
        guard let millis else { return "-" }
        return millis < 1000 ? "\(millis)ms" : "\(decimal(Double(millis) / 1000))s"
    }
}

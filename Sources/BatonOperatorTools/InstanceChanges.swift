import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Foundation

/// What changed between two state snapshots of an instance, in words: steps started, completed (with their
/// time), failed, retried, compensated; human tasks created, claimed and closed; the instance's status. For
/// `baton watch ID`, which follows an instance's snapshots on the state topic.
///
/// A coordinator writes one snapshot per batch of events, so two changes may arrive together (a step completes
/// and the next one starts); they are listed in the order they happened: what ended, then the instance's new
/// status (unless it finished), then what started, then how the instance finished.
public enum InstanceChanges {
    public struct Change: Sendable, Hashable, CustomStringConvertible {
        /// The step it is about (`step[2]` for an item of a for_each step); nil for the instance itself.
        public var subject: String?
        public var text: String
        public init(_ subject: String?, _ text: String) {
            self.subject = subject
            self.text = text
        }
        public var description: String { subject.map { "\($0)  \(text)" } ?? text }
    }

    /// The changes from `old` (nil: the first snapshot seen) to `new`, written at `at` (milliseconds); step ids
    /// come from `workflow` (without it, steps are named by position: `#1`).
    public static func between(_ old: InstanceState?, _ new: InstanceState, workflow: Workflow?, at: Int64) -> [Change] {
        var ended: [Change] = []
        var begun: [Change] = []
        func stepID(_ s: Int) -> String { workflow.flatMap { s < $0.steps.count ? $0.steps[s].id : nil } ?? "#\(s + 1)" }
        func error(_ text: String?) -> String { text.map { ": \($0)" } ?? "" }
        for s in new.steps.indices {
            let o: StepState? = old.flatMap { s < $0.steps.count ? $0.steps[s] : nil }
            let n = new.steps[s]
            let id = stepID(s)
            let isForEach = n.items != nil || workflow.map { s < $0.steps.count && $0.steps[s].forEach != nil } == true
            let isTask = workflow.map { s < $0.steps.count && $0.steps[s].isHumanTask } == true
            for u in n.units.indices {
                // What the unit was (not dispatched yet, when it did not exist).
                let ou: UnitState? = o.flatMap { u < $0.units.count ? $0.units[u] : nil }
                let (oldStatus, oldAttempt) = (ou?.status ?? .pending, ou?.attempt ?? 0)
                let (oldCompensation, oldCompensationAttempt) = (ou?.compensation, ou?.compensationAttempt ?? 0)
                let nu = n.units[u]
                let name = isForEach ? "\(id)[\(u)]" : id
                if nu.attempt > oldAttempt {
                    // Failed (or timed out) and sent again between two snapshots.
                    if oldStatus == .running, oldAttempt > 0 { ended.append(Change(name, "attempt \(oldAttempt) failed\(error(nu.error))")) }
                    if nu.status == .running { begun.append(Change(name, isTask ? "waiting for a person (attempt \(nu.attempt))" : "started (attempt \(nu.attempt))")) }
                }
                if nu.status != oldStatus || nu.attempt != oldAttempt {
                    switch nu.status {
                    case .backoff:
                        let retry = new.timers.first { $0.key.kind == .retry && $0.key.step == s && $0.key.attempt == nu.attempt }
                        let when = retry.map { "; retrying in \(Self.duration($0.dueAt - at))" } ?? "; retrying"
                        ended.append(Change(name, "attempt \(nu.attempt) failed\(error(nu.error))\(when)"))
                    case .completed where isForEach: ended.append(Change(name, "completed (attempt \(nu.attempt))"))
                    case .failed where isForEach: ended.append(Change(name, "failed (attempt \(nu.attempt))\(error(nu.error))"))
                    default: break
                    }
                }
                if nu.compensation != oldCompensation || nu.compensationAttempt != oldCompensationAttempt {
                    if oldCompensation == .running, nu.compensationAttempt > oldCompensationAttempt {
                        ended.append(Change(name, "compensation attempt \(oldCompensationAttempt) failed\(error(nu.compensationError))"))
                    }
                    switch nu.compensation {
                    case .running: begun.append(Change(name, "compensating (attempt \(nu.compensationAttempt))"))
                    case .backoff: ended.append(Change(name, "compensation attempt \(nu.compensationAttempt) failed\(error(nu.compensationError)); retrying"))
                    case .done: ended.append(Change(name, "compensated"))
                    case .failed: ended.append(Change(name, "compensation failed\(error(nu.compensationError))"))
                    case .skipped: ended.append(Change(name, "compensation skipped"))
                    case nil: break
                    }
                }
                switch (ou?.task, nu.task) {
                case (nil, let t?):
                    begun.append(Change(name, "task \(t.taskID) created for \(t.assignee)"))
                case (let before?, let t?) where before.taskID != t.taskID:
                    ended.append(Change(name, "task \(before.taskID) closed"))
                    begun.append(Change(name, "task \(t.taskID) created for \(t.assignee)"))
                case (let before?, let t?) where before.claimedBy != t.claimedBy:
                    begun.append(Change(name, t.claimedBy.map { "task \(t.taskID) claimed by \($0)" } ?? "task \(t.taskID) given back"))
                case (let before?, nil):
                    ended.append(Change(name, "task \(before.taskID) closed"))
                default: break
                }
            }
            if n.status != (o?.status ?? .pending) {
                let took = n.startedAt.flatMap { start in n.finishedAt.map { " in \(Self.duration($0 - start))" } } ?? ""
                switch n.status {
                case .completed:
                    let what = isForEach ? "\(n.units.count) items" : "attempt \(n.units.first?.attempt ?? 0)"
                    ended.append(Change(id, "completed\(took) (\(what))"))
                case .failed: ended.append(Change(id, "failed\(took)\(error(n.error ?? (isForEach ? nil : n.units.first?.error)))"))
                case .skipped: ended.append(Change(id, "skipped"))
                case .pending, .active: break
                }
            }
        }
        var changes: [Change] = []
        if old == nil { changes.append(Change(nil, "\(new.instanceID): \(new.workflowID) v\(new.version), \(new.status.rawValue)")) }
        let settled = new.status.isFinished || new.status == .suspended
        let status = old.map { $0.status != new.status } == true ? Change(nil, "instance \(new.status.rawValue)\(new.reason.map { ": \($0)" } ?? "")") : nil
        changes += ended
        if let status, !settled { changes.append(status) }
        changes += begun
        if let status, settled { changes.append(status) }
        return changes
    }

    /// The last line of `baton watch ID`: how it ended (or why it stopped: suspended), and how long it took.
    public static func outcome(_ state: InstanceState, at: Int64) -> String {
        let took = Self.duration((state.finishedAt ?? at) - state.startedAt)
        return "\(state.instanceID): \(state.status.rawValue) after \(took)\(state.reason.map { " (\($0))" } ?? "")"
    }

    /// 850ms, 2.4s, 3m12s.
    public static func duration(_ millis: Int64) -> String {
        let ms = max(0, millis)
        if ms < 1000 { return "\(ms)ms" }
        if ms < 60_000 { return "\(WatchFrame.decimal(Double(ms) / 1000))s" }
        return "\(ms / 60_000)m\((ms % 60_000) / 1000)s"
    }
}

extension BatonClient {
    /// Follows one instance's state snapshots from the first on its partition of the state topic, and hands each
    /// snapshot's changes to `body` with the snapshot's timestamp. Returns the last state once everything written
    /// so far has been read and the instance has finished or is suspended (`stop` decides), or nil when the task
    /// was cancelled first. Throws when no snapshot of the instance appears within `waitFor`.
    public func followInstance(
        _ id: String, waitFor: Duration, stop: (InstanceStatus) -> Bool = { $0.isFinished || $0 == .suspended },
        _ body: (_ at: Int64, _ changes: [InstanceChanges.Change]) throws -> Void
    ) async throws -> (state: InstanceState, at: Int64)? {
        let partition = TopicPartition(names.state, KafkaPartitioner.partition(forKey: id, partitionCount: try await partitionCount(names.state)))
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        do {
            let last = try await follow(id, on: partition, consumer: consumer, waitFor: waitFor, stop: stop, body)
            await consumer.close()
            return last
        } catch {
            await consumer.close()
            throw error
        }
    }

    func follow(
        _ id: String, on partition: TopicPartition, consumer: KafkaConsumer, waitFor: Duration, stop: (InstanceStatus) -> Bool,
        _ body: (_ at: Int64, _ changes: [InstanceChanges.Change]) throws -> Void
    ) async throws -> (state: InstanceState, at: Int64)? {
        try consumer.assign([TopicPartitionOffset(partition, offset: TopicPartitionOffset.beginning)])
        var last: (state: InstanceState, at: Int64)?
        var workflow: Workflow?
        var caughtUp = false
        let clock = ContinuousClock()
        let deadline = clock.now + waitFor
        while !Task.isCancelled {
            for event in try await consumer.poll(maxEvents: 1000, timeout: .milliseconds(100)) {
                switch event {
                case .message(let m) where m.keyString == id:
                    let at = m.timestamp ?? Self.now()
                    guard let value = m.value else {
                        if last != nil { try body(at, [InstanceChanges.Change(nil, "removed: its retention ended")]) }
                        continue
                    }
                    let state: InstanceState
                    do { state = try StateCodec.decode(value) } catch {
                        try body(at, [InstanceChanges.Change(nil, "a snapshot at \(m.topicPartition)@\(m.offset) cannot be read: \(error.reason)")])
                        continue
                    }
                    if workflow?.id != state.workflowID || workflow?.version != state.version {
                        workflow = try await definition(state.workflowID, version: state.version)
                    }
                    let changes = InstanceChanges.between(last?.state, state, workflow: workflow, at: at)
                    if !changes.isEmpty { try body(at, changes) }
                    last = (state, at)
                case .partitionEOF: caughtUp = true
                default: break
                }
            }
            if caughtUp, let last, stop(last.state.status) { return last }
            if last == nil, clock.now >= deadline {
                throw ClientError(
                    .notFound, "no instance '\(id)' on \(names.state) within \(waitFor): is the id right, was it started in namespace '\(names.namespace)', and is a coordinator running?")
            }
        }
        return nil
    }
}

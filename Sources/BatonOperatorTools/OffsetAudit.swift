import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging

/// Where an unfinished instance stopped, found by reading every record of the engine's topics and the
/// offsets each consumer group committed: for each attempt an instance waits on, was its command published,
/// did the pool's group consume past it, is there a result, did the coordinators consume past that result?
/// A record a group committed past without acting on it is a record that was skipped: the defect this audit
/// exists to catch (`baton bench --audit`).
public struct OffsetAudit: Sendable {
    public enum Finding: String, Sendable, CaseIterable {
        /// The state says the attempt runs, but no command for it is on its pool's topic.
        case commandNeverPublished = "command never published"
        /// The command is past the pool group's committed offset: not consumed yet (the pool is behind).
        case workerBehind = "worker behind"
        /// The pool's group committed past the command, and there is no result: the command was skipped.
        case workerSkippedCommand = "worker skipped the command"
        /// The result is past the coordinators' committed offset: not applied yet (the coordinator is behind).
        case coordinatorBehind = "coordinator behind"
        /// The coordinators committed past the result, and the state does not show it: the result was skipped.
        case coordinatorSkippedResult = "coordinator skipped the result"
        /// Nothing runs: the instance waits for a timer (a retry), a person, or an operator.
        case waiting = "waiting for a timer, a person or an operator"
        /// Not on the state topic at all: its start was not applied.
        case neverStarted = "never started"
    }

    public struct Entry: Sendable, CustomStringConvertible {
        public var instanceID: String
        public var finding: Finding
        public var detail: String
        public var description: String { "\(instanceID): \(finding.rawValue) (\(detail))" }
    }

    public var entries: [Entry]
    public var counts: [Finding: Int] {
        entries.reduce(into: [:]) { $0[$1.finding, default: 0] += 1 }
    }

    /// Audits `instanceIDs` (the ones that did not finish) in the namespace of `client`.
    public static func run(client: BatonClient, instanceIDs: Set<String>, logger: Logger) async throws -> OffsetAudit {
        let names = client.names
        guard !instanceIDs.isEmpty else { return OffsetAudit(entries: []) }
        var states: [String: InstanceState] = [:]
        try await client.readAll(names.state) { m in
            guard let id = m.keyString, instanceIDs.contains(id) else { return }
            states[id] = try m.value.map { try StateCodec.decode($0) }
        }
        struct Attempt: Hashable {
            var instance: String, step: String, item: Int?, attempt: Int, compensation: Bool
        }
        var waitingOn: [String: [(Attempt, pool: String)]] = [:]
        var workflows: [String: Workflow] = [:]
        for (id, state) in states {
            let key = "\(state.workflowID)@\(state.version)"
            if workflows[key] == nil { workflows[key] = try await client.definition(state.workflowID, version: state.version) }
            guard let workflow = workflows[key] else { continue }
            for (s, step) in state.steps.enumerated() {
                for (u, unit) in step.units.enumerated() {
                    let item = workflow.steps[s].forEach == nil ? nil : u
                    if unit.status == .running, workflow.steps[s].hasWorker {
                        waitingOn[id, default: []].append((Attempt(instance: id, step: workflow.steps[s].id, item: item, attempt: unit.attempt, compensation: false), workflow.steps[s].pool))
                    }
                    if unit.compensation == .running, let c = workflow.steps[s].compensation {
                        waitingOn[id, default: []].append((Attempt(instance: id, step: workflow.steps[s].id, item: item, attempt: unit.compensationAttempt, compensation: true), c.pool))
                    }
                }
            }
        }
        // Every command of the pools concerned, and every result on the events topic.
        let pools = Set(waitingOn.values.flatMap { $0.map(\.pool) })
        var commands: [Attempt: TopicPartitionOffset] = [:]
        for pool in pools {
            try await client.readAll(names.commands(pool)) { m in
                guard let value = m.value, let c = try? Wire.decode(CommandMessage.self, from: value), instanceIDs.contains(c.instanceID) else { return }
                commands[Attempt(instance: c.instanceID, step: c.step, item: c.item, attempt: c.attempt, compensation: c.isCompensation)] = TopicPartitionOffset(m.topicPartition, offset: m.offset)
            }
        }
        var results: [Attempt: TopicPartitionOffset] = [:]
        try await client.readAll(names.events) { m in
            guard let value = m.value, let kind = try? Wire.kind(of: value),
                [.stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed].contains(kind),
                let r = try? Wire.decode(ResultMessage.self, from: value), instanceIDs.contains(r.instanceID)
            else { return }
            let compensation = kind == .compensationCompleted || kind == .compensationFailed
            results[Attempt(instance: r.instanceID, step: r.step, item: r.item, attempt: r.attempt, compensation: compensation)] = TopicPartitionOffset(m.topicPartition, offset: m.offset)
        }
        func committed(group: String, _ partitions: Set<TopicPartition>) async throws -> [TopicPartition: Int64] {
            guard !partitions.isEmpty else { return [:] }
            // A consumer of the group that never joins it: it only asks what the group committed.
            let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client.client, groupID: group), logger: logger)
            do {
                let offsets = try await consumer.committed(Array(partitions))
                await consumer.close()
                return Dictionary(offsets.map { ($0.topicPartition, $0.offset) }) { a, _ in a }
            } catch {
                await consumer.close()
                throw error
            }
        }
        var entries: [Entry] = []
        var workerCommitted: [String: [TopicPartition: Int64]] = [:]
        for pool in pools {
            let partitions = Set(commands.values.map(\.topicPartition).filter { $0.topic == names.commands(pool) })
            workerCommitted[pool] = try await committed(group: names.workerGroup(pool), partitions)
        }
        let coordinatorCommitted = try await committed(group: names.coordinatorGroup, Set(results.values.map(\.topicPartition)))
        for id in instanceIDs.sorted() {
            guard states[id] != nil else {
                entries.append(Entry(instanceID: id, finding: .neverStarted, detail: "no snapshot on \(names.state)"))
                continue
            }
            guard let attempts = waitingOn[id], !attempts.isEmpty else {
                entries.append(Entry(instanceID: id, finding: .waiting, detail: states[id]?.status.rawValue ?? ""))
                continue
            }
            for (attempt, pool) in attempts {
                let what = "\(attempt.compensation ? "compensation of " : "")\(attempt.step)\(attempt.item.map { "[\($0)]" } ?? "") attempt \(attempt.attempt)"
                guard let command = commands[attempt] else {
                    entries.append(Entry(instanceID: id, finding: .commandNeverPublished, detail: "\(what) on \(names.commands(pool))"))
                    continue
                }
                guard let result = results[attempt] else {
                    let done = workerCommitted[pool]?[command.topicPartition] ?? -1
                    let finding: Finding = done > command.offset ? .workerSkippedCommand : .workerBehind
                    entries.append(Entry(instanceID: id, finding: finding, detail: "\(what): command at \(command), \(Self.committed(done, by: "the pool's group"))"))
                    continue
                }
                let applied = coordinatorCommitted[result.topicPartition] ?? -1
                let finding: Finding = applied > result.offset ? .coordinatorSkippedResult : .coordinatorBehind
                entries.append(Entry(instanceID: id, finding: finding, detail: "\(what): result at \(result), \(Self.committed(applied, by: "the coordinators"))"))
            }
        }
        return OffsetAudit(entries: entries)
    }

    /// What a group committed, in words: a negative offset (librdkafka's -1001, "stored") means the group has
    /// committed nothing on that partition, that is, no member has finished a record there yet.
    static func committed(_ offset: Int64, by group: String) -> String {
        offset >= 0 ? "\(group) committed offset \(offset)" : "\(group) committed nothing there yet (no member has finished a record on it)"
    }
}

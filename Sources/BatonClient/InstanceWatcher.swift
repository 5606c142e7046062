import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Synchronization

/// Follows the state topic and keeps the latest committed state of every instance: for waiting on
/// instances, for `baton watch`, for the benchmark. Only snapshots from committed transactions are read
/// (read_committed). Unless `light`, it follows the outputs topic too and puts each instance's outputs back.
///
/// It follows while its `run()` runs, on a task its owner starts and cancels; `watching(client:names:logger:light:_:)`
/// does both around a body.
public final class InstanceWatcher: Sendable {
    struct Seen {
        var states: [String: InstanceState] = [:]
        var snapshots: [String: InstanceState] = [:]
        var outputs: [String: [String: OutputRecord]] = [:]
        /// In light mode, only statuses are kept.
        var statuses: [String: InstanceStatus] = [:]
        /// When each instance was first seen finished (or suspended), in this process's clock (milliseconds since the epoch).
        var finishedSeenAt: [String: Int64] = [:]
        /// When each instance was first seen waiting for a person.
        var waitingSeenAt: [String: Int64] = [:]
        /// Instances whose newest snapshot has a completed unit whose output was not read yet, since when (this
        /// process's clock). The coordinator writes both in one transaction, but the two topics are fetched
        /// apart: until the output is read, the instance keeps the state published before, so that a waiter never
        /// sees a step completed without its output.
        var awaitingOutputs: [String: Int64] = [:]

        mutating func publish(_ id: String, status: InstanceStatus, at now: Int64) {
            statuses[id] = status
            if status.isFinished || status == .suspended, finishedSeenAt[id] == nil { finishedSeenAt[id] = now }
            if status == .waiting, waitingSeenAt[id] == nil { waitingSeenAt[id] = now }
        }
    }
    /// How long a snapshot waits for its outputs before it is published without them (an output record that is
    /// gone: deleted by retention, or written by a foreign producer and skipped).
    static let outputGrace: Int64 = 5_000
    let seen = Mutex(Seen())
    let consumer: KafkaConsumer
    let registry: DefinitionRegistry?
    let names: TopicNames
    let logger: Logger
    /// Keeps only each instance's status (no full decode): for watching many instances cheaply.
    let light: Bool

    public init(client: KafkaClientConfiguration, names: TopicNames, logger: Logger, light: Bool = false) async throws {
        self.logger = logger
        self.light = light
        self.names = names
        let configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        registry = light ? nil : try await DefinitionRegistry(client: client, names: names, logger: logger)
        let metadata = try await consumer.metadata()
        var partitions: [TopicPartitionOffset] = []
        for topic in light ? [names.state] : [names.state, names.outputs] {
            guard let t = metadata.topics[topic] else { throw ClientError(.notFound, "topic \(topic) does not exist; run `baton topics apply` first") }
            partitions += (0..<Int32(t.partitionCount)).map { TopicPartitionOffset(topic, $0, offset: TopicPartitionOffset.beginning) }
        }
        try consumer.assign(partitions)
    }

    /// Runs `body` with a watcher that follows the topics meanwhile, then stops following and closes it (also
    /// when `body` throws).
    public static func watching<T: Sendable>(
        client: KafkaClientConfiguration, names: TopicNames, logger: Logger, light: Bool = false, _ body: (InstanceWatcher) async throws -> T
    ) async throws -> T {
        let watcher = try await InstanceWatcher(client: client, names: names, logger: logger, light: light)
        do {
            let result = try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await watcher.run() }
                defer { group.cancelAll() }
                return try await body(watcher)
            }
            await watcher.close()
            return result
        } catch {
            await watcher.close()
            throw error
        }
    }

    /// Why the watcher stopped following, when it stopped on an error (a closed or failed consumer).
    public var failure: String? { stopped.withLock { $0 } }
    let stopped = Mutex<String?>(nil)

    /// Follows the topics until its task is cancelled. When reading fails for good (librdkafka retries what it
    /// can itself), it logs and records why (`failure`; `wait` then answers at once) and throws it.
    public func run() async throws {
        while !Task.isCancelled {
            let events: [KafkaConsumerEvent]
            do {
                events = try await consumer.poll(maxEvents: 5000, timeout: .milliseconds(50))
            } catch {
                if Task.isCancelled { return }
                logger.error("instance watcher stopped: reading \(names.state) failed", metadata: ["error": "\(error)"])
                stopped.withLock { $0 = "\(error)" }
                throw error
            }
            let now = WallClock.millis()
            var decoded: [(String, InstanceStatus, InstanceState?)] = []
            var outputs: [OutputRecord] = []
            for case .message(let m) in events {
                guard let value = m.value, let id = m.keyString else { continue }
                // Records a coordinator did not write (a foreign producer on an engine topic) are not the watcher's
                // to report: the coordinators dead-letter what they cannot read; the watcher skips it.
                if m.topic == names.outputs {
                    if let record = try? Wire.decode(OutputRecord.self, from: value) { outputs.append(record) }
                } else if light {
                    if let status = StateCodec.status(value) { decoded.append((id, status, nil)) }
                } else if let state = try? StateCodec.decode(value) {
                    decoded.append((id, state.status, state))
                }
            }
            guard !decoded.isEmpty || !outputs.isEmpty || seen.withLock({ !$0.awaitingOutputs.isEmpty }) else { continue }
            // A definition registered since: read it before putting outputs back (if reading fails, the outputs of
            // that workflow's instances wait until the next round, and the failure is logged).
            if !outputs.isEmpty {
                do { try await registry?.catchUp() } catch { logger.warning("instance watcher: reading the definitions failed", metadata: ["error": "\(error)"]) }
            }
            let registry = self.registry
            seen.withLock { s in
                var changed = Set<String>()
                for record in outputs {
                    s.outputs[record.instanceID, default: [:]][record.key] = record
                    changed.insert(record.instanceID)
                }
                for (id, status, state) in decoded {
                    if let state {
                        s.snapshots[id] = state
                        changed.insert(id)
                    } else {
                        s.publish(id, status: status, at: now)
                    }
                }
                changed.formUnion(s.awaitingOutputs.keys)
                for id in changed {
                    guard var state = s.snapshots[id] else { continue }
                    if let workflow = registry?.workflow(state.workflowID, version: state.version) {
                        let stored = (s.outputs[id] ?? [:]).values.compactMap { r in
                            workflow.index[r.step].map { StoredOutput(step: $0, item: r.item, attempt: r.attempt, output: r.output) }
                        }
                        state.restore(outputs: stored, workflow: workflow)
                        let missing = state.steps.contains { $0.units.contains { $0.status == .completed && $0.output == nil } }
                        if missing {
                            let since = s.awaitingOutputs[id] ?? now
                            s.awaitingOutputs[id] = since
                            if now - since < Self.outputGrace { continue }
                        }
                    }
                    s.awaitingOutputs[id] = nil
                    s.states[id] = state
                    s.publish(id, status: state.status, at: now)
                }
            }
        }
    }

    public func state(_ id: String) -> InstanceState? { seen.withLock { $0.states[id] } }
    public func status(_ id: String) -> InstanceStatus? { seen.withLock { $0.statuses[id] } }
    public func finishedSeenAt(_ id: String) -> Int64? { seen.withLock { $0.finishedSeenAt[id] } }
    public func waitingSeenAt(_ id: String) -> Int64? { seen.withLock { $0.waitingSeenAt[id] } }
    public var all: [InstanceState] { seen.withLock { Array($0.states.values) } }

    /// Waits until every one of `ids` has one of `statuses`; false when `timeout` passed first, or at once when the
    /// watcher stopped on an error (`failure` says which).
    public func wait(for ids: Set<String>, toBe statuses: Set<InstanceStatus>, timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let done = seen.withLock { s in ids.allSatisfy { s.statuses[$0].map { statuses.contains($0) } ?? false } }
            if done { return true }
            if failure != nil { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// Closes its consumer and registry, once `run()` has ended.
    public func close() async {
        await consumer.close()
        await registry?.close()
    }
}

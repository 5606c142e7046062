import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import DequeModule
import Foundation
import Logging
import Metrics
import Synchronization

/// A read model of the engine: follows the state, outputs, tasks, definitions, alerts and dead-letter topics
/// (read_committed) into indexed in-memory views, catches up before it says it is ready, then follows live
/// and hands out a stream of changes. One instance serves every reader of a process (`baton serve`, the CLI).
///
/// What it shows is what the topics hold. On a broker that shows records of aborted transactions to
/// read_committed readers (Tansu), a snapshot from a transaction that aborted may show for a moment, until
/// the coordinator that takes over writes the instance again from the same events.
public final class ReadModel: Sendable {
    public struct Settings: Sendable {
        /// How many of the latest alerts and dead letters are kept.
        public var recentAlerts = 1_000
        public var recentDeadLetters = 1_000
        /// Whether to read a partition again at an offset gap (Tansu shows later records first).
        public var gapRereads = GapRereads.auto
        public init() {}
    }

    public let names: TopicNames
    let client: KafkaClientConfiguration
    let settings: Settings
    let logger: Logger
    let store: Mutex<Store>
    let hub = ChangeHub()
    /// Instances held (`baton_read_model_instances`).
    let instancesHeld = Gauge(label: "baton_read_model_instances")
    let readiness = Readiness()

    public init(client: KafkaClientConfiguration, names: TopicNames, settings: Settings = .init(), logger: Logger) {
        self.client = client
        self.names = names
        self.settings = settings
        self.logger = logger
        self.store = Mutex(Store(recentAlerts: settings.recentAlerts, recentDeadLetters: settings.recentDeadLetters))
    }

    /// The topics it follows.
    public var topics: [String] { [names.definitions, names.state, names.outputs, names.tasks, names.alerts, names.deadletter] }

    /// Whether it has read every followed partition up to where it ended when the read model started.
    public var isReady: Bool { readiness.isReady }

    /// Waits until the read model has caught up (or throws what stopped it).
    public func waitUntilReady(timeout: Duration = .seconds(120)) async throws {
        try await readiness.wait(timeout: timeout)
    }

    /// Follows the topics until cancelled. Throws when a topic is missing or the consumer fails for good.
    public func run() async throws {
        do {
            try await follow()
        } catch is CancellationError {
            readiness.fail(CancellationError())
        } catch {
            readiness.fail(error)
            throw error
        }
    }

    func follow() async throws {
        let admin = try KafkaAdmin(configuration: client, logger: logger)
        let metadata = try await admin.metadata()
        var partitions: [TopicPartition] = []
        for topic in topics {
            guard let t = metadata.topics[topic], t.error == nil, t.partitionCount > 0 else {
                throw ReadModelError("topic \(topic) does not exist; run `baton topics apply` first")
            }
            partitions += (0..<Int32(t.partitionCount)).map { TopicPartition(topic, $0) }
        }
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        do {
            try consumer.assign(partitions.map { TopicPartitionOffset($0, offset: TopicPartitionOffset.beginning) })
            try await read(consumer, partitions: partitions, gaps: GapGuard(enabled: settings.gapRereads.enabled(clusterID: metadata.clusterID)))
        } catch {
            await consumer.close()
            throw error
        }
    }

    func read(_ consumer: KafkaConsumer, partitions: [TopicPartition], gaps initialGaps: GapGuard) async throws {
        var gaps = initialGaps
        var behind = Set(partitions)
        // Where each partition ended when last seen at its end, and the partitions read again from a gap since:
        // such a partition is caught up once it reads past that end again (or comes to its end again).
        var ends: [TopicPartition: Int64] = [:]
        var rereading: Set<TopicPartition> = []
        let started = ContinuousClock.now
        var records = 0
        logger.info("read model catching up", metadata: ["partitions": "\(partitions.count)"])
        while !Task.isCancelled {
            let events = try await consumer.poll(maxEvents: 5_000, timeout: .milliseconds(100))
            var readingAgain: Set<TopicPartition> = []
            var changes: [ReadModelChange] = []
            var messages: [KafkaMessage] = []
            for event in events {
                switch event {
                case .message(let message):
                    let tp = message.topicPartition
                    if readingAgain.contains(tp) { continue }
                    if rereading.contains(tp), let end = ends[tp], message.offset + 1 >= end {
                        rereading.remove(tp)
                        if !readiness.isReady { behind.remove(tp) }
                    }
                    switch gaps.check(message) {
                    case .take: messages.append(message)
                    case .drop: break
                    case .filledGap(let from, let to):
                        logger.warning("the broker showed later records before earlier ones; read again, they are there now", metadata: ["partition": "\(message.topicPartition)", "offsets": "\(from)..<\(to)"])
                        messages.append(message)
                    case .reread(let from):
                        do {
                            try await consumer.seek([TopicPartitionOffset(message.topicPartition, offset: from)])
                            readingAgain.insert(message.topicPartition)
                            rereading.insert(tp)
                            if !readiness.isReady { behind.insert(tp) }
                        } catch {
                            logger.warning("could not read \(message.topicPartition) again from \(from); going on: \(error)")
                            gaps.forget([message.topicPartition])
                            _ = gaps.check(message)
                            messages.append(message)
                        }
                    }
                case .partitionEOF(let tp, let offset):
                    ends[tp] = max(ends[tp] ?? 0, offset)
                    // An end reported before a seek in this batch is the end of what is being read again.
                    if readingAgain.contains(tp) { continue }
                    rereading.remove(tp)
                    if behind.remove(tp) != nil, behind.isEmpty {
                        logger.notice("read model caught up", metadata: ["records": "\(records + messages.count)", "took": "\(ContinuousClock.now - started)"])
                    }
                case .error(let error):
                    logger.warning("reading the engine's topics: \(error)")
                default: break
                }
            }
            if !messages.isEmpty {
                records += messages.count
                let (applied, held) = store.withLock { store in (messages.compactMap { store.apply($0, names: names, logger: logger) }, store.instances.count) }
                changes = applied
                instancesHeld.record(held)
            }
            // Ready only after what came before the end was applied.
            if behind.isEmpty, !readiness.isReady { readiness.markReady() }
            for change in changes { hub.publish(change) }
        }
        throw CancellationError()
    }

    // MARK: Changes

    /// Every change from now on, until the stream is dropped.
    public func changes() -> AsyncStream<ReadModelChange> { hub.subscribe() }

    /// Waits until `check` gives a value, looking after every change; nil when `timeout` passes first.
    public func wait<T: Sendable>(timeout: Duration, _ check: @Sendable @escaping (ReadModel) -> T?) async -> T? {
        let stream = changes()
        if let value = check(self) { return value }
        return await withTaskGroup(of: T?.self) { group in
            group.addTask {
                for await _ in stream {
                    if let value = check(self) { return value }
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)  // the deadline: cancelled when the condition came first
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}

public struct ReadModelError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What changed in the read model.
public struct ReadModelChange: Sendable, Hashable, Codable {
    public enum Kind: String, Sendable, Hashable, Codable { case instance, task, definition, alert, deadletter = "dead_letter" }
    public var kind: Kind
    /// The instance id, task id, definition key (`<workflow>@<version>`), or alert or dead letter id.
    public var id: String
    public var instanceID: String?
    public var workflowID: String?
    /// An instance's status after the change (nil when it was removed), or a task's.
    public var status: String?
    public var removed: Bool = false

    enum CodingKeys: String, CodingKey { case kind, id, instanceID = "instance_id", workflowID = "workflow_id", status, removed }
}

/// Fans changes out to every subscriber.
final class ChangeHub: Sendable {
    let subscribers = Mutex<[UInt64: AsyncStream<ReadModelChange>.Continuation]>([:])
    let nextID = Atomic<UInt64>(0)

    func subscribe() -> AsyncStream<ReadModelChange> {
        let (stream, continuation) = AsyncStream.makeStream(of: ReadModelChange.self, bufferingPolicy: .bufferingNewest(10_000))
        let id = nextID.add(1, ordering: .relaxed).newValue
        subscribers.withLock { $0[id] = continuation }
        continuation.onTermination = { [weak self] _ in self?.subscribers.withLock { _ = $0.removeValue(forKey: id) } }
        return stream
    }

    func publish(_ change: ReadModelChange) {
        for continuation in subscribers.withLock({ Array($0.values) }) { continuation.yield(change) }
    }

    var count: Int { subscribers.withLock { $0.count } }
}

/// Ready once, or failed: what waiters learn.
final class Readiness: Sendable {
    enum Phase { case catchingUp, ready, failed(any Error) }
    struct State {
        var phase = Phase.catchingUp
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var next: UInt64 = 0
    }
    let state = Mutex(State())

    var isReady: Bool { state.withLock { if case .ready = $0.phase { true } else { false } } }

    func markReady() { settle(.ready) }
    func fail(_ error: any Error) { settle(.failed(error)) }

    func settle(_ phase: Phase) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            if case .ready = s.phase { return [] }
            s.phase = phase
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in waiters {
            if case .failed(let error) = phase { w.resume(throwing: error) } else { w.resume() }
        }
    }

    /// Waits until ready; throws what failed it, or when `timeout` passes first.
    func wait(timeout: Duration) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.waitReady() }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw ReadModelError("the read model did not catch up within \(timeout)")
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    func waitReady() async throws {
        let id = state.withLock { s in
            s.next += 1
            return s.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = state.withLock { s in
                    switch s.phase {
                    case .ready: return .success(())
                    case .failed(let e): return .failure(e)
                    case .catchingUp:
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiters[id] = c
                        return nil
                    }
                }
                if let now { c.resume(with: now) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }
}

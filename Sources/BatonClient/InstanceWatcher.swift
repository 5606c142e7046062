import BatonCore
import BatonKafka
import BatonWire
import Foundation
import Logging
import Synchronization

/// Follows the state topic and keeps the latest committed state of every instance: for waiting on
/// instances, for `baton watch`, for the benchmark. Only snapshots from committed transactions are read
/// (read_committed).
public final class InstanceWatcher: Sendable {
    struct Seen {
        var states: [String: InstanceState] = [:]
        /// In light mode, only statuses are kept.
        var statuses: [String: InstanceStatus] = [:]
        /// When each instance was first seen finished, in this process's clock (milliseconds since the epoch).
        var finishedSeenAt: [String: Int64] = [:]
    }
    let seen = Mutex(Seen())
    let consumer: KafkaConsumer
    let task: Mutex<Task<Void, Never>?> = Mutex(nil)
    let logger: Logger
    /// Keeps only each instance's status (no full decode): for watching many instances cheaply.
    let light: Bool

    public init(client: KafkaClientConfiguration, names: TopicNames, logger: Logger, light: Bool = false) async throws {
        self.logger = logger
        self.light = light
        let configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        guard let topic = try await consumer.metadata().topics[names.state] else {
            throw ClientError("topic \(names.state) does not exist; run `baton topics apply` first")
        }
        try consumer.assign((0..<Int32(topic.partitionCount)).map { TopicPartitionOffset(names.state, $0, offset: TopicPartitionOffset.beginning) })
        let t = Task { [self] in await follow() }
        task.withLock { $0 = t }
    }

    func follow() async {
        while !Task.isCancelled {
            guard let events = try? await consumer.poll(maxEvents: 5000, timeout: .milliseconds(50)) else { return }
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            var decoded: [(String, InstanceStatus, InstanceState?)] = []
            for case .message(let m) in events {
                guard let value = m.value, let id = m.keyString else { continue }
                if light {
                    if let status = StateCodec.status(value) { decoded.append((id, status, nil)) }
                } else if let state = try? StateCodec.decode(value) {
                    decoded.append((id, state.status, state))
                }
            }
            guard !decoded.isEmpty else { continue }
            seen.withLock { s in
                for (id, status, state) in decoded {
                    s.statuses[id] = status
                    if let state { s.states[id] = state }
                    if status.isFinished || status == .suspended, s.finishedSeenAt[id] == nil {
                        s.finishedSeenAt[id] = now
                    }
                }
            }
        }
    }

    public func state(_ id: String) -> InstanceState? { seen.withLock { $0.states[id] } }
    public func status(_ id: String) -> InstanceStatus? { seen.withLock { $0.statuses[id] } }
    public func finishedSeenAt(_ id: String) -> Int64? { seen.withLock { $0.finishedSeenAt[id] } }
    public var all: [InstanceState] { seen.withLock { Array($0.states.values) } }

    /// Waits until every one of `ids` has one of `statuses`; false when `timeout` passed first.
    public func wait(for ids: Set<String>, toBe statuses: Set<InstanceStatus>, timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let done = seen.withLock { s in ids.allSatisfy { s.statuses[$0].map { statuses.contains($0) } ?? false } }
            if done { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    public func close() async {
        task.withLock { $0?.cancel() }
        await task.withLock { $0 }?.value
        await consumer.close()
    }
}

import BatonKafka
import BatonTopics
import BatonWire
import Logging
import Synchronization

/// Why a process will not run on its namespace's topics: each problem names the topic and why.
public struct EngineTopicsError: Error, CustomStringConvertible, Sendable {
    public var namespace: String
    public var problems: [String]
    /// Found by the check at start (the process refused to run), else while running (it stopped).
    public var atStart: Bool

    public init(namespace: String, problems: [String], atStart: Bool) {
        self.namespace = namespace
        self.problems = problems
        self.atStart = atStart
    }

    public var description: String {
        let what =
            atStart
            ? "refusing to run: the engine topics of namespace '\(namespace)' are not as the engine needs them"
            : "stopping: the engine topics of namespace '\(namespace)' vanished or changed while running (a wiped, replaced or reset cluster?); what was read from them is gone, so nothing more is applied or served"
        return what + ":\n" + problems.map { "  \($0)" }.joined(separator: "\n")
            + "\nSee `baton check`; missing topics come back with `baton topics apply`. The process exits with status \(EngineTopicGuard.exitStatus); start it again once `baton check` passes (docs/operations.md, \"Lost or drifted topics\")."
    }
}

/// Checks the engine topics a process uses before it runs, and watches them while it runs (issue 20).
///
/// At start (`checkAtStart`) each topic must exist, topics keyed alike must have one partition count, and each
/// must have its declared `cleanup.policy` (`TopicCheckScope.engine`, the check `baton check` and
/// `baton topics apply` use too). While running (`watch`), the same check runs every `interval`, and each
/// topic's id is compared with the one seen at start: a topic that vanished, or came back under a new id (deleted
/// and created again, or a wiped cluster whose topics were applied again) means the records the process read
/// from it are gone. A problem seen on two checks in a row (so a broker answering from a half-filled cache does
/// not stop every process) is a loss: logged at critical level, the process reports not ready, and `watch`
/// throws `EngineTopicsError`, on which the process stops and exits with `exitStatus`. A broker that does not
/// answer is an outage, not a loss: the check waits for it.
public final class EngineTopicGuard: Sendable {
    /// Which engine topics (spec names) each kind of process reads or writes.
    public enum Role: String, Sendable, CaseIterable {
        case coordinator, worker, triggers, server

        public var topics: Set<String> {
            switch self {
            case .coordinator: ["events", "state", "outputs", "mailboxes", "definitions", "tasks", "alerts", "notifications", "deadletter"]
            case .worker: ["events", "deadletter"]
            case .triggers: ["events", "definitions", "deadletter"]
            case .server: ["events", "state", "outputs", "definitions", "tasks", "alerts", "deadletter"]
            }
        }
    }

    /// The exit status of a process that refuses to run, or stops, because its topics are missing, drifted or
    /// were reset: 78, EX_CONFIG of sysexits.h. Distinct from 1 (any other failure) so that supervisors and
    /// operators can tell it apart.
    public static let exitStatus: Int32 = 78

    let admin: KafkaAdmin
    let inspector: TopicInspector
    let specs: [TopicSpec]
    let namespace: String
    /// Topics without a spec that the process needs (a worker pool's command topic): once seen, they must stay and keep their id.
    let others: [String]
    let interval: Duration
    let logger: Logger

    struct State {
        /// Each topic's id when first seen.
        var ids: [String: String] = [:]
        var confirmation = LossConfirmation()
        var lost: [String]?
    }
    let state = Mutex(State())

    public init(
        client: KafkaClientConfiguration, names: TopicNames, role: Role, others: [String] = [], interval: Duration = .seconds(3), logger: Logger
    ) throws {
        admin = try KafkaAdmin(configuration: client, logger: logger)
        namespace = names.namespace
        inspector = TopicInspector(admin: admin, namespace: names.namespace)
        specs = try TopicSpecLoader.builtIn().filter { role.topics.contains($0.name) }
        self.others = others
        self.interval = interval
        self.logger = logger
    }

    /// False once the topics were found missing, drifted or reset: the process is not ready.
    public var isSound: Bool { state.withLock { $0.lost == nil } }
    /// What was found, once the topics are not sound.
    public var problems: [String]? { state.withLock { $0.lost } }

    /// Checks the topics once, before the process runs; throws `EngineTopicsError` (logged at critical level)
    /// when any is missing or drifted. Fails as the brokers' metadata request does when none answers.
    public func checkAtStart() async throws {
        var problems = try await check()
        // Twice more, 2 s apart, before refusing: a cluster may list a topic created a moment ago (by a
        // `topics apply` just before) only once its metadata has spread.
        for _ in 0..<2 where !problems.isEmpty {
            try await Task.sleep(for: .seconds(2))
            problems = try await check()
        }
        guard !problems.isEmpty else { return }
        state.withLock { $0.lost = problems }
        let error = EngineTopicsError(namespace: namespace, problems: problems, atStart: true)
        logger.critical("\(error)", metadata: ["namespace": "\(namespace)", "topics": "\(problems.count)"])
        throw error
    }

    /// Checks every `interval` until cancelled (returns) or a loss is confirmed (throws `EngineTopicsError`).
    public func watch() async throws {
        while true {
            do { try await Task.sleep(for: interval) } catch { return }  // cancelled: the process is stopping
            let problems: [String]
            do {
                problems = try await check()
            } catch is CancellationError {
                return
            } catch {
                // No answer, or an answer that is an error: an outage, not a loss. The next check tries again.
                logger.debug("engine topics not checked: \(error)")
                continue
            }
            let confirmed = state.withLock { s -> [String]? in
                guard let confirmed = s.confirmation.observe(problems) else { return nil }
                s.lost = confirmed
                return confirmed
            }
            if let confirmed {
                let error = EngineTopicsError(namespace: namespace, problems: confirmed, atStart: false)
                logger.critical("\(error)", metadata: ["namespace": "\(namespace)", "topics": "\(confirmed.count)"])
                throw error
            }
            if !problems.isEmpty {
                logger.warning("engine topics look lost or changed; checking again in \(interval)", metadata: ["problems": "\(problems.joined(separator: "; "))"])
            }
        }
    }

    /// One check: the problems found (none when sound). Records the ids of topics seen for the first time.
    func check() async throws -> [String] {
        let inspection = try await inspector.inspect(specs, scope: .engine)
        var problems = inspection.problems
        let metadata = others.isEmpty ? nil : try await admin.metadata()
        let listed = metadata?.topics ?? [:]
        // A command topic may appear after the start (its worker or coordinator creates it); once seen, it must stay.
        let seen = state.withLock { $0.ids }
        for topic in others where seen[topic] != nil && listed[topic].map({ $0.error != nil || $0.partitionCount == 0 }) ?? true {
            problems.append("\(topic) vanished (a command topic: the coordinator, `baton definitions register` or the worker creates it)")
        }
        let present = specs.map { $0.topicName(namespace: namespace) }.filter { inspection.partitions[$0] != nil }
            + others.filter { listed[$0] != nil }
        let ids = try await admin.topicIDs(present)
        let changed = state.withLock { s -> [String] in
            var changed: [String] = []
            for (topic, id) in ids.sorted(by: { $0.key < $1.key }) {
                if let known = s.ids[topic], known != id {
                    changed.append("\(topic) was deleted and created again (topic id \(known), now \(id)): the records read from it are gone")
                } else if s.ids[topic] == nil {
                    s.ids[topic] = id
                }
            }
            return changed
        }
        return problems + changed
    }
}

/// Whether the problems of one check confirm those of the check before: a loss is acted on only when a problem
/// shows on two checks in a row, so that one answer from a broker whose metadata is still filling does not stop
/// a process.
public struct LossConfirmation: Sendable {
    private var suspect: Set<String> = []

    public init() {}

    /// The problems of a check; returns them when one of them was also found by the check before.
    public mutating func observe(_ problems: [String]) -> [String]? {
        defer { suspect = Set(problems) }
        return problems.contains(where: suspect.contains) ? problems : nil
    }
}

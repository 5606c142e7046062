import BatonClient
import BatonCore
import BatonCoordinator
import BatonKafka
import BatonRuntime
import BatonTestSupport
import BatonTopics
import BatonWire
import BatonWorker
import Foundation
import Logging
import Synchronization

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A whole engine for one test: its own namespace (topics), coordinators and workers running as services
/// in this process, and a client. Everything talks to the real broker.
final class Engine: Sendable {
    let names: TopicNames
    let client: BatonClient
    let watcher: InstanceWatcher
    /// The watcher following the topics, until `shutdown` cancels it.
    let watching: Task<Void, any Error>
    let partitions: Int
    /// The broker it talks to: the shared one, or a test's own (`PrivateBroker`).
    let kafka: KafkaClientConfiguration
    let coordinators = Mutex<[Task<Void, any Error>]>([])
    let workers = Mutex<[(StepWorker, Task<Void, any Error>)]>([])
    /// Whether `shutdown` has closed the client and the watcher (they are closed once).
    private let closed = Mutex(false)

    /// A namespace of its own, or `namespace` (an existing one, such as after a wipe).
    init(partitions: Int = 3, kafka: KafkaClientConfiguration = TestKafka.client, namespace: String? = nil) async throws {
        names = TopicNames(namespace: namespace ?? TestKafka.uniqueName("e"))
        self.partitions = partitions
        self.kafka = kafka
        var specs = try TopicSpecLoader.load(directory: repositoryRoot.appendingPathComponent("topics"))
        for i in specs.indices where specs[i].isKeyed { specs[i].partitions = partitions }
        let applier = TopicApplier(admin: try KafkaAdmin(configuration: kafka, logger: TestKafka.logger), namespace: names.namespace, replicationFactor: 1, logger: TestKafka.logger)
        _ = try await applier.apply(specs)
        client = try BatonClient(client: kafka, names: names, signer: TestKeys.serverSigner, logger: TestKafka.logger)
        let watcher = try await InstanceWatcher(client: kafka, names: names, logger: TestKafka.logger)
        self.watcher = watcher
        watching = Task { try await watcher.run() }
    }

    var coordinatorConfiguration: CoordinatorConfiguration {
        var c = CoordinatorConfiguration(client: kafka, names: names, security: TestKeys.security)
        c.sessionTimeout = .seconds(6)
        c.maxPollInterval = .seconds(6)
        c.idleWait = .milliseconds(20)
        return c
    }

    @discardableResult
    func startCoordinator(_ configure: (inout CoordinatorConfiguration) -> Void = { _ in }) -> Int {
        var configuration = coordinatorConfiguration
        configuration.identity = "in-process-\(coordinators.withLock { $0.count })"
        configure(&configuration)
        let coordinator = Coordinator(configuration: configuration, logger: TestKafka.logger)
        return coordinators.withLock {
            $0.append(Task { try await coordinator.run() })
            return $0.count - 1
        }
    }

    func stopCoordinator(_ index: Int) async {
        let task = coordinators.withLock { $0[index] }
        task.cancel()
        _ = await task.result
    }

    /// Runs a worker of the pool until `shutdown` (or until the test stops it and awaits its task).
    @discardableResult
    func startWorker(
        _ pool: String, concurrency: Int = 16, configure: (inout WorkerConfiguration) -> Void = { _ in }, handler: @escaping StepHandler
    ) -> (worker: StepWorker, task: Task<Void, any Error>) {
        var c = WorkerConfiguration(client: kafka, names: names, pool: pool)
        c.concurrency = concurrency
        c.sessionTimeout = .seconds(6)
        c.maxPollInterval = .seconds(6)
        c.shutdownGrace = .seconds(2)
        configure(&c)
        let worker = StepWorker(configuration: c, logger: TestKafka.logger, handler: handler)
        let task = Task { try await worker.run() }
        workers.withLock { $0.append((worker, task)) }
        return (worker, task)
    }

    /// Runs one `baton` command (as an operator would) against this namespace; its exit status and output.
    func baton(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = try BatonProcess(
            arguments + ["--log-level", "error"], namespace: names.namespace, brokers: kafka.brokers, environment: ["BATON_SIGNING_KEY": TestKeys.operatorKey])
        return (await process.exitStatus(), process.output)
    }

    /// A long-running `baton` service (coordinator, workers) as a child process on this engine's broker.
    func process(_ arguments: [String]) throws -> BatonProcess {
        try BatonProcess(arguments, namespace: names.namespace, brokers: kafka.brokers)
    }

    func register(_ yaml: String) async throws -> Workflow {
        try await client.register(document: Data(yaml.utf8))
    }

    func start(_ workflow: String, input: JSON = [:], id: String? = nil) async throws -> String {
        try await client.start(workflowID: workflow, input: input, instanceID: id, partitions: partitions)
    }

    /// Waits until the instance reaches one of `statuses`, and returns its state.
    @discardableResult
    func wait(_ id: String, for statuses: Set<InstanceStatus>, timeout: Duration = .seconds(60)) async throws -> InstanceState {
        guard await watcher.wait(for: [id], toBe: statuses, timeout: timeout), let state = watcher.state(id) else {
            let last = watcher.state(id)
            throw DeadlineExceeded(what: "\(id) to be \(statuses.map(\.rawValue).sorted()); last seen \(last.map { "\($0.status): \($0.reason ?? "")" } ?? "nothing")")
        }
        return state
    }

    /// Every record of a topic so far (all partitions).
    func records(_ topic: String) async throws -> [KafkaMessage] {
        var out: [KafkaMessage] = []
        try await client.readAll(topic) { out.append($0) }
        return out
    }

    /// Stops every worker and coordinator started so far and closes the client and the watcher. It may be called
    /// again (a test that stops the engine on purpose, then `withEngine` at the end): stopping again is
    /// harmless, and the client and the watcher are closed only the first time.
    func shutdown() async {
        for (worker, _) in workers.withLock({ $0 }) { worker.stop() }
        for (_, task) in workers.withLock({ $0 }) { _ = await task.result }
        for task in coordinators.withLock({ $0 }) { task.cancel() }
        for task in coordinators.withLock({ $0 }) { _ = await task.result }
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        watching.cancel()
        _ = await watching.result
        await watcher.close()
        await client.close()
    }
}

/// Runs `body` with a new engine (see `Engine.init`) and shuts it down when `body` ends, also when it throws: a
/// failing test leaves no coordinator or worker of its own running into the next one.
func withEngine<T>(
    partitions: Int = 3, kafka: KafkaClientConfiguration = TestKafka.client, namespace: String? = nil, _ body: (Engine) async throws -> T
) async throws -> T {
    let engine = try await Engine(partitions: partitions, kafka: kafka, namespace: namespace)
    let result: T
    do {
        result = try await body(engine)
    } catch {
        await engine.shutdown()
        throw error
    }
    await engine.shutdown()
    return result
}

/// A thread-safe log of what handlers saw, for the assertions.
final class Recorder<T: Sendable>: Sendable {
    let items = Mutex<[T]>([])
    func add(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
}

/// Holds handlers until the test opens it; a handler waits without polling.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
    func wait() async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { s in
                if s.open { return true }
                s.waiting.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
    func open() {
        let waiting = state.withLock { s in
            s.open = true
            defer { s.waiting = [] }
            return s.waiting
        }
        for continuation in waiting { continuation.resume() }
    }
}

func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

/// The keys of every test of this process: the folder `scripts/test` made (`BATON_KEYS_DIR`), else one made here
/// once. In-process coordinators, servers and clients use it, and `BatonProcess` gives it to every process.
enum TestKeys {
    static let directory: URL = {
        if let dir = ProcessInfo.processInfo.environment[KeySettings.directoryVariable], !dir.isEmpty { return URL(fileURLWithPath: dir) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("baton-test-keys-\(ProcessInfo.processInfo.processIdentifier)")
        // A test process that cannot write its temporary folder cannot run any engine test: stop here, with the reason.
        do {
            try KeyDirectory.initialize(dir)
            if !FileManager.default.fileExists(atPath: dir.appendingPathComponent(operatorKeyFile).path) {
                _ = try KeyDirectory.addOperatorKey(dir, principal: .person("ops", Principal.operatorRole))
            }
        } catch { fatalError("cannot make the tests' keys in \(dir.path): \(error)") }
        return dir
    }()
    /// The operator `ops`'s own key, with which `baton instances ...` signs from the command line.
    static let operatorKeyFile = "operator-ops.key"
    static var operatorKey: String { directory.appendingPathComponent(operatorKeyFile).path }
    static var settings: KeySettings { KeySettings.fromEnvironment([KeySettings.directoryVariable: directory.path]) }
    static let security: CoordinatorSecurity = load { try settings.loadSecurity() }
    /// The server's key: it signs for whoever a test names (`Principal.person`).
    static let serverSigner: AuthoritySigner = load { try settings.loadSigner() }

    static func load<T>(_ body: () throws -> T) -> T {
        do { return try body() } catch { fatalError("the tests' keys in \(directory.path) do not load: \(error)") }
    }
}

extension Principal {
    /// Someone with these roles, for a test's decision or action.
    static func person(_ name: String, _ roles: String...) -> Principal { Principal(subject: name, roles: Set(roles)) }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Synchronization

/// The cases of `baton conformance` (docs/conformance.md), in the order they run.
public enum ConformanceCase: String, CaseIterable, Sendable {
    case echo
    case failure
    case compensation
    case duplicate
    case oldAttempt = "old-attempt"
    case token
    case start
    case unreadable
    case oversized
    case deadline
    case crash
    case commits

    /// One line: what the case checks.
    public var summary: String {
        switch self {
        case .echo: "a command is answered on reply_to, keyed by instance id, with its step, item and attempt and the handler's output"
        case .failure: "a handler's failure is step.failed with its error text and retryable flag"
        case .compensation: "a compensation.command is answered with compensation.completed or compensation.failed"
        case .duplicate: "the same command delivered twice: every answer is for its attempt, and they agree"
        case .oldAttempt: "attempt 2 then attempt 1 of a step: each answer carries its own command's attempt"
        case .token: "a command's token is echoed in its heartbeats and result; a command without a token is answered without one"
        case .start: "an attempt still running 1 s after it started is reported started: a step.heartbeat for its attempt, with its token, before its result"
        case .unreadable: "records that are not commands go to the dead-letter topic with the baton-dlq-* headers; the next command is answered"
        case .oversized: "an output whose result would be over 256 KiB is step.failed, not retryable, instead of being sent"
        case .deadline: "a command more than 1 s past its deadline gets no answer; the next one does"
        case .crash: "a worker killed (SIGKILL) while it runs a command: the command is answered after a restart"
        case .commits: "at the end the pool's group has committed every command"
        }
    }
}

/// How a case went: passed, or failed with what was wrong (the first problem on the FAIL line, the rest after it).
public struct ConformanceOutcome: Sendable {
    public var name: String
    public var problems: [String]
    /// What happened, for the reader (printed under the line).
    public var notes: [String]
    public var passed: Bool { problems.isEmpty }

    public init(name: String, problems: [String], notes: [String] = []) {
        self.name = name
        self.problems = problems
        self.notes = notes
    }

    /// `PASS name` or `FAIL name: why`, then the other problems and the notes, indented.
    public var lines: [String] {
        let first = passed ? "PASS \(name)" : "FAIL \(name): \(problems[0])"
        return [first] + problems.dropFirst().map { "  \($0)" } + notes.map { "  \($0)" }
    }
}

public struct ConformanceConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    /// A namespace of the tool's own: it plays coordinator there (no engine may run in it).
    public var names: TopicNames
    public var pool: String
    /// The worker under test: run as `bash -c worker`, with BATON_POOL, BATON_BROKERS and BATON_NAMESPACE set.
    public var worker: String
    /// More variables for the worker (BATON_KAFKA_CONFIG, BATON_FETCH_WAIT ...).
    public var workerEnvironment: [String: String] = [:]
    public var cases: [ConformanceCase] = ConformanceCase.allCases
    /// Partitions of the topics the tool creates when they are missing.
    public var commandPartitions = 3
    public var eventsPartitions = 2
    /// How long each answer (or commit) may take once the worker has joined.
    public var answerTimeout: Duration = .seconds(20)
    /// How long the worker may take to answer its first commands, and to take over after the crash.
    public var joinTimeout: Duration = .seconds(60)
    /// How long the crash case's command runs.
    public var sleep: Duration = .seconds(5)
    /// Where the worker's output goes (worker-1.log, and worker-2.log after the crash).
    public var logDirectory: URL

    public init(client: KafkaClientConfiguration, names: TopicNames, pool: String, worker: String, logDirectory: URL) {
        self.client = client
        self.names = names
        self.pool = pool
        self.worker = worker
        self.logDirectory = logDirectory
    }
}

/// `baton conformance`: plays coordinator for one worker pool on a namespace of its own, drives the worker
/// under test (a child process it starts, kills and restarts) through the protocol's cases, and reports each
/// case as it ends. The worker is stopped on every path out of `run`, cancellation included.
public final class ConformanceSuite: Sendable {
    public let configuration: ConformanceConfiguration
    let logger: Logger
    let worker: ConformanceWorkerProcess

    public init(configuration: ConformanceConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var environment = ProcessInfo.processInfo.environment
        environment["BATON_POOL"] = configuration.pool
        environment["BATON_BROKERS"] = configuration.client.brokers.bootstrapServers
        environment["BATON_NAMESPACE"] = configuration.names.namespace
        environment.merge(configuration.workerEnvironment) { $1 }
        worker = ConformanceWorkerProcess(command: configuration.worker, environment: environment, logDirectory: configuration.logDirectory)
    }

    /// The worker's log files, one per start.
    public var workerLogs: [URL] { worker.logs }

    /// Runs the configured cases (`commits` always last), calling `report` as each ends. Throws when the run
    /// cannot be set up (no broker, a namespace an engine uses) or is cancelled; a worker that misbehaves,
    /// answers nothing or dies fails cases instead.
    public func run(_ report: @Sendable (ConformanceOutcome) -> Void) async throws -> [ConformanceOutcome] {
        let setup = try await prepareTopics()
        let probe = try ConformanceProbe(
            client: configuration.client, names: configuration.names, pool: configuration.pool, commandPartitions: setup.commands,
            eventsPartitions: setup.events, deadletterPartitions: setup.deadletter, logger: logger)
        let run = ConformanceRun(configuration: configuration, probe: probe, worker: worker)
        var outcomes: [ConformanceOutcome] = []
        func record(_ outcome: ConformanceOutcome) {
            outcomes.append(outcome)
            report(outcome)
        }
        do {
            try probe.startReading()
            try worker.start()
            let cases = ConformanceCase.allCases.filter(configuration.cases.contains)
            if let failure = try await run.startup() {
                record(failure)
                for c in cases { record(ConformanceOutcome(name: c.rawValue, problems: ["not run: the worker did not start"])) }
            } else {
                for c in cases { record(try await run.run(c)) }
            }
        } catch {
            await worker.stop()
            await probe.close()
            throw error
        }
        await worker.stop()
        await probe.close()
        return outcomes
    }

    struct Partitions {
        var events: Int
        var deadletter: Int
        var commands: Int
    }

    /// Creates the events, dead-letter and command topics that are missing; their partition counts.
    func prepareTopics() async throws -> Partitions {
        let names = configuration.names
        let admin = try KafkaAdmin(configuration: configuration.client, logger: logger)
        var metadata = try await admin.metadata()
        if metadata.topics[names.state] != nil {
            throw ClientError(
                .invalid, "namespace '\(names.namespace)' has engine topics (\(names.state)): a coordinator there would take the tool's answers; "
                    + "give conformance a namespace of its own (--namespace, or leave it out for a fresh one)")
        }
        let wanted = [
            NewTopic(name: names.events, partitions: configuration.eventsPartitions),
            NewTopic(name: names.deadletter, partitions: 1),
            NewTopic(name: names.commands(configuration.pool), partitions: configuration.commandPartitions),
        ].filter { metadata.topics[$0.name] == nil }
        if !wanted.isEmpty {
            for (topic, error) in try await admin.createTopics(wanted) {
                if let error, error.code != .topicAlreadyExists { throw ClientError(.unavailable, "could not create \(topic): \(error)") }
            }
        }
        let all = [names.events, names.deadletter, names.commands(configuration.pool)]
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            metadata = try await admin.metadata()
            if all.allSatisfy({ (metadata.topics[$0]?.partitionCount ?? 0) > 0 }) { break }
            guard ContinuousClock.now < deadline else {
                throw ClientError(.unavailable, "the brokers did not show \(all.filter { (metadata.topics[$0]?.partitionCount ?? 0) == 0 }.joined(separator: ", ")) within 30 s")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return Partitions(
            events: metadata.topics[names.events]?.partitionCount ?? 1, deadletter: metadata.topics[names.deadletter]?.partitionCount ?? 1,
            commands: metadata.topics[names.commands(configuration.pool)]?.partitionCount ?? 1)
    }
}

/// A command the tool wrote, and what its answer must echo.
struct SentCommand: Sendable {
    var instanceID: String
    var step: String
    var item: Int?
    var attempt: Int
    var isCompensation: Bool
    var idempotencyKey: String
    var input: JSON
    var partition: Int32
    var offset: Int64
    var replyPartition: Int32
    /// The command's result token: every answer must carry it unchanged (none when nil).
    var token: String?

    var described: String {
        "\(isCompensation ? "compensation of " : "")\(instanceID)/\(step)\(item.map { "[\($0)]" } ?? "") attempt \(attempt) (offset \(partition)@\(offset))"
    }
}

/// One run's state: the probe, the worker, and the offsets written per command partition.
final class ConformanceRun: Sendable {
    let configuration: ConformanceConfiguration
    let probe: ConformanceProbe
    let worker: ConformanceWorkerProcess
    let runID = String(UUID().uuidString.prefix(8).lowercased())
    /// The highest offset written to each command partition.
    let written = Mutex<[Int32: Int64]>([:])

    init(configuration: ConformanceConfiguration, probe: ConformanceProbe, worker: ConformanceWorkerProcess) {
        self.configuration = configuration
        self.probe = probe
        self.worker = worker
    }

    var names: TopicNames { configuration.names }
    var commandTopic: String { names.commands(configuration.pool) }

    func run(_ c: ConformanceCase) async throws -> ConformanceOutcome {
        do {
            let notes: [String]
            switch c {
            case .echo: notes = try await echo()
            case .failure: notes = try await failure()
            case .compensation: notes = try await compensation()
            case .duplicate: notes = try await duplicate()
            case .oldAttempt: notes = try await oldAttempt()
            case .token: notes = try await token()
            case .start: notes = try await start()
            case .unreadable: notes = try await unreadable()
            case .oversized: notes = try await oversized()
            case .deadline: notes = try await deadline()
            case .crash: notes = try await crash()
            case .commits: notes = try await commits()
            }
            return ConformanceOutcome(name: c.rawValue, problems: [], notes: notes)
        } catch let failure as ConformanceFailure {
            return ConformanceOutcome(name: c.rawValue, problems: failure.problems)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            return ConformanceOutcome(name: c.rawValue, problems: ["\(error)"])
        }
    }

    // MARK: Commands

    /// The fields of a step command, with a token of its own as a coordinator sends; cases change or drop some.
    func commandFields(
        _ instanceID: String, step: String = "work", attempt: Int = 1, item: Int? = nil, input: JSON, deadline: Int64? = nil,
        compensation: Bool = false, replyPartition: Int32
    ) -> [String: JSON] {
        let key = "\(instanceID)/\(step)\(item.map { "/\($0)" } ?? "")\(compensation ? "/compensation" : "")"
        var fields: [String: JSON] = [
            "v": 1, "kind": .string(compensation ? "compensation.command" : "step.command"), "instance_id": .string(instanceID),
            "workflow_id": "conformance", "workflow_version": 1, "step": .string(step), "type": "service_call",
            "pool": .string(configuration.pool), "attempt": .number(Double(attempt)), "input": input,
            "deadline": .number(Double(deadline ?? Self.now() + 600_000)), "idempotency_key": .string(key),
            "reply_to": ["topic": .string(names.events), "partition": .number(Double(replyPartition))],
            "token": .string(Self.newToken()),
        ]
        if let item { fields["item"] = .number(Double(item)) }
        return fields
    }

    /// A token as opaque as a coordinator's (its HMAC is no business of the worker's): 43 characters of
    /// base64url, different for every command.
    static func newToken() -> String {
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// An instance id for this run.
    func instance(_ label: String) -> String { "\(label)-\(runID)" }

    /// The events partition a command names for its answer: the one after its key's (murmur2) partition, so
    /// that a worker that lets its producer place the answer by key, instead of using reply_to, is caught.
    func replyPartition(for instanceID: String) -> Int32 {
        let count = probe.eventsPartitions
        return Int32((Int(KafkaPartitioner.partition(forKey: instanceID, partitionCount: count)) + 1) % count)
    }

    /// Writes a step (or compensation) command with an echo-able input to a command partition.
    func send(
        _ instanceID: String, step: String = "work", attempt: Int = 1, item: Int? = nil, input: JSON, deadline: Int64? = nil,
        compensation: Bool = false, partition: Int32, edit: (inout [String: JSON]) -> Void = { _ in }
    ) async throws -> SentCommand {
        let reply = replyPartition(for: instanceID)
        var fields = commandFields(
            instanceID, step: step, attempt: attempt, item: item, input: input, deadline: deadline, compensation: compensation, replyPartition: reply)
        edit(&fields)
        let offset = try await write(JSON.object(fields).encoded(), key: instanceID, partition: partition)
        return SentCommand(
            instanceID: instanceID, step: step, item: item, attempt: attempt, isCompensation: compensation,
            idempotencyKey: fields["idempotency_key"]?.stringValue ?? "", input: input, partition: partition, offset: offset, replyPartition: reply,
            token: fields["token"]?.stringValue)
    }

    /// Writes any record to a command partition (remembering the offset for the commits case).
    func write(_ value: Data, key: String, partition: Int32, headers: [KafkaHeader] = []) async throws -> Int64 {
        let offset: Int64
        do { offset = try await probe.send(value, key: key, partition: partition, headers: headers) } catch {
            throw ConformanceFailure("could not write a command to \(commandTopic)[\(partition)]: \(error)")
        }
        written.withLock { $0[partition] = max($0[partition] ?? -1, offset) }
        return offset
    }

    /// The command partition a case writes to: cases are spread over the partitions.
    func partition(_ n: Int) -> Int32 { Int32(n % probe.commandPartitions) }

    static func now() -> Int64 { WallClock.millis() }

    // MARK: Waiting

    /// Throws when the worker has ended (it is only ever stopped by the tool between waits).
    func checkWorker() throws {
        if let ended = worker.ended() {
            let tail = worker.logTail(lines: 12)
            throw ConformanceFailure(
                problems: ["the worker \(ended)"] + (tail.isEmpty ? [] : ["its output ends with:"] + tail.split(separator: "\n").map { "  | \($0)" }))
        }
        try probe.checkHealthy()
    }

    struct Collected {
        var answers: [String: [ConformanceAnswer]]
        /// The group committed past every command (and what it wrote before was read back).
        var committed: Bool
    }

    /// Waits until every command has an answer for its attempt, or the group has committed past all of them
    /// (then what the worker wrote before committing is read back), or the timeout passes.
    func collect(_ commands: [SentCommand], timeout: Duration? = nil) async throws -> Collected {
        let deadline = ContinuousClock.now + (timeout ?? configuration.answerTimeout)
        var lastCommitCheck = ContinuousClock.now
        func gather() -> [String: [ConformanceAnswer]] {
            Dictionary(Set(commands.map(\.instanceID)).map { ($0, probe.answers(for: $0)) }) { a, _ in a }
        }
        while true {
            let answers = gather()
            let complete = commands.allSatisfy { c in answers[c.instanceID, default: []].contains { $0.result?.attempt == c.attempt } }
            if complete { return Collected(answers: answers, committed: false) }
            try checkWorker()
            if ContinuousClock.now - lastCommitCheck > .milliseconds(250) {
                lastCommitCheck = .now
                if try await committedPast(commands) {
                    try await probe.settle(timeout: configuration.answerTimeout)
                    return Collected(answers: gather(), committed: true)
                }
            }
            if ContinuousClock.now >= deadline { return Collected(answers: gather(), committed: false) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Whether the group's committed offset is past each command.
    func committedPast(_ commands: [SentCommand]) async throws -> Bool {
        let committed = try await probe.committed(Array(Set(commands.map(\.partition))))
        return commands.allSatisfy { (committed[$0.partition] ?? -1) > $0.offset }
    }

    /// Waits until the group has committed past every command, then reads back what the worker wrote before.
    func settle(after commands: [SentCommand]) async throws {
        let deadline = ContinuousClock.now + configuration.answerTimeout
        while try await !committedPast(commands) {
            try checkWorker()
            guard ContinuousClock.now < deadline else {
                let committed = try await probe.committed(Array(Set(commands.map(\.partition))))
                let behind = commands.filter { (committed[$0.partition] ?? -1) <= $0.offset }
                throw ConformanceFailure(
                    "the pool's group did not commit past \(behind.map(\.described).joined(separator: ", ")) within \(configuration.answerTimeout) "
                        + "(committed: \(committed.sorted { $0.key < $1.key }.map { "\($0.key)@\($0.value)" }.joined(separator: ", ")))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await probe.settle(timeout: configuration.answerTimeout)
    }

    /// What is wrong with an answer as the answer to `command`, whatever the handler did.
    func problems(_ answer: ConformanceAnswer, for command: SentCommand) -> [String] {
        let m = answer.message
        let at = "the answer at \(m.topic)[\(m.partition)]@\(m.offset)"
        if let problem = answer.problem { return ["\(at): \(problem)"] }
        guard let r = answer.result else { return ["\(at) is not a result"] }
        var out: [String] = []
        if m.partition != command.replyPartition {
            out.append("\(at) is on partition \(m.partition), but the command's reply_to.partition was \(command.replyPartition)")
        }
        if m.keyString != command.instanceID {
            out.append("\(at) is keyed \(m.keyString.map { "'\($0)'" } ?? "by nothing"), not by the instance id '\(command.instanceID)'")
        }
        let kinds: [Wire.Kind] = command.isCompensation ? [.compensationCompleted, .compensationFailed] : [.stepCompleted, .stepFailed]
        if !kinds.contains(r.kind) {
            out.append("\(at) is a '\(r.kind.rawValue)'; a \(command.isCompensation ? "compensation.command" : "step.command") is answered with \(kinds.map(\.rawValue).joined(separator: " or "))")
        }
        if r.step != command.step { out.append("\(at) has step '\(r.step)', the command's was '\(command.step)'") }
        if r.item != command.item {
            out.append("\(at) has item \(r.item.map(String.init) ?? "absent"), the command's was \(command.item.map(String.init) ?? "absent")")
        }
        if r.attempt != command.attempt { out.append("\(at) has attempt \(r.attempt), the command's was \(command.attempt)") }
        if let problem = tokenProblem(r.token, for: command) { out.append("\(at) \(problem)") }
        return out
    }

    /// What is wrong with the token of an answer (result or heartbeat) to `command`, if anything.
    func tokenProblem(_ token: String?, for command: SentCommand) -> String? {
        switch (token, command.token) {
        case (nil, nil): return nil
        case (nil, let expected?):
            return "has no token; the command's was \"\(expected)\" (a coordinator that requires tokens dead-letters it)"
        case (let got?, nil): return "has token \"\(got)\", but the command had none (a command without a token is answered without one)"
        case (let got?, let expected?): return got == expected ? nil : "has token \"\(got)\", the command's was \"\(expected)\""
        }
    }

    /// The output the echo operation must give for a command.
    func echoed(_ command: SentCommand, value: JSON) -> JSON {
        ["echo": value, "attempt": .number(Double(command.attempt)), "idempotency_key": .string(command.idempotencyKey)]
    }

    /// The one answer of `command` (for its attempt) from what was collected, or why there is none.
    func answer(to command: SentCommand, in collected: Collected) -> (ConformanceAnswer?, [String]) {
        let all = collected.answers[command.instanceID] ?? []
        if let found = all.first(where: { $0.result?.attempt == command.attempt }) { return (found, problems(found, for: command)) }
        if let other = all.first { return (nil, problems(other, for: command)) }
        let why = collected.committed
            ? "the pool's group committed past \(command.described) without answering it"
            : "no answer to \(command.described) within \(configuration.answerTimeout)"
        return (nil, [why])
    }

    /// Fails with every problem found, if any.
    func check(_ problems: [String]) throws {
        if !problems.isEmpty { throw ConformanceFailure(problems: problems) }
    }

    // MARK: Startup

    /// One echo command to each command partition; the worker has joined its group and reads every partition
    /// once each is answered. Nil when it did; else the startup's failure.
    func startup() async throws -> ConformanceOutcome? {
        var commands: [SentCommand] = []
        for p in 0..<Int32(probe.commandPartitions) {
            commands.append(try await send(instance("startup-\(p)"), input: ["op": "echo", "value": "startup"], partition: p))
        }
        let deadline = ContinuousClock.now + configuration.joinTimeout
        while true {
            let answered = commands.filter { !probe.answers(for: $0.instanceID).isEmpty }
            if answered.count == commands.count { return nil }
            var problems: [String] = []
            if let ended = worker.ended() {
                problems = ["the worker \(ended) before it answered a command on every partition (\(answered.count) of \(commands.count))"]
            } else if ContinuousClock.now >= deadline {
                problems = [
                    "the worker answered \(answered.count) of \(commands.count) commands (one per partition of \(commandTopic)) within \(configuration.joinTimeout): "
                        + "did it join the group \(names.workerGroup(configuration.pool)), and does it read every partition?"
                ]
            } else if let failure = probe.seen.withLock({ $0.failure }) {
                problems = [failure]
            }
            if !problems.isEmpty {
                let tail = worker.logTail(lines: 12)
                return ConformanceOutcome(
                    name: "startup", problems: problems,
                    notes: tail.isEmpty ? ["(the worker printed nothing)"] : ["its output ends with:"] + tail.split(separator: "\n").map { "  | \($0)" })
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

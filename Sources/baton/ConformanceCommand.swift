import ArgumentParser
import BatonClient
import BatonConformance
import BatonCore
import BatonExamples
import BatonKafka
import BatonWire
import BatonWorker
import Foundation
import Logging
import Synchronization
import UnixSignals

struct Conformance: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a worker implementation, in any language, against the wire protocol (docs/conformance.md).",
        discussion: """
            Starts the worker command (bash -c, with BATON_POOL, BATON_BROKERS and BATON_NAMESPACE set), plays coordinator for \
            its pool on a namespace of its own (a fresh conformance-XXXXXXXX unless --namespace is given; $BATON_NAMESPACE is not \
            used), and runs the cases. The worker \
            serves the pool with the conformance handler: input {"op":"echo","value":X} completes with \
            {"echo":X,"attempt":A,"idempotency_key":K}; {"op":"fail","error":E,"retryable":B} fails; {"op":"output_bytes","bytes":N} \
            completes with {"data": N times "x"}; {"op":"sleep","ms":N,"value":X} waits, then echoes; {"op":"heartbeat","ms":N,"value":X} \
            sends a step.heartbeat, then sleeps. Answers echo the command's token. Prints PASS name or \
            FAIL name: why for each case, then "N passed, N failed"; exits 0 only when every case passed. The worker is \
            stopped at the end, on failure and on SIGINT or SIGTERM. Cases: \
            \(ConformanceCase.allCases.map { "\($0.rawValue) (\($0.summary))" }.joined(separator: "; ")).
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The worker pool: commands go to <namespace>.commands.POOL, and the worker's group is <namespace>.workers.POOL.")
    var pool = "conformance"
    @Option(help: ArgumentHelp("The shell command that runs the worker under test (run with bash -c, in this directory).", valueName: "command"))
    var worker: String
    @Option(name: .customLong("case"), help: ArgumentHelp("Run only this case (repeatable).", valueName: "name"))
    var cases: [String] = []
    @Option(help: "Seconds the worker may take to answer its first commands, and to take over after the crash.")
    var joinTimeout = 60
    @Option(help: "Seconds each answer (and commit) may take once the worker runs.")
    var answerTimeout = 20
    @Option(help: "Milliseconds the crash case's command sleeps.")
    var sleepMs = 5000
    @Option(help: ArgumentHelp("Where the worker's output goes (default: a new temporary directory).", valueName: "directory"))
    var logs: String?

    func run() async throws {
        var selected: [ConformanceCase] = []
        for name in cases {
            guard let c = ConformanceCase(rawValue: name) else {
                throw CLIFailure("--case: no case '\(name)'; the cases: \(ConformanceCase.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            selected.append(c)
        }
        guard joinTimeout > 0, answerTimeout > 0 else { throw CLIFailure("--join-timeout and --answer-timeout must be at least 1 second") }
        guard sleepMs >= 1000 else { throw CLIFailure("--sleep-ms: \(sleepMs) is too short to kill the worker in the middle of it (at least 1000)") }
        let logger = connection.makeLogger("baton.conformance")
        let namespace = connection.namespace ?? "conformance-\(UUID().uuidString.prefix(8).lowercased())"
        let logDirectory = URL(fileURLWithPath: logs ?? FileManager.default.temporaryDirectory.appendingPathComponent("baton-conformance-\(namespace)").path)
        var configuration = ConformanceConfiguration(
            client: try connection.clientConfiguration, names: TopicNames(namespace: namespace), pool: pool, worker: worker, logDirectory: logDirectory)
        if !selected.isEmpty { configuration.cases = selected }
        configuration.joinTimeout = .seconds(joinTimeout)
        configuration.answerTimeout = .seconds(answerTimeout)
        configuration.sleep = .milliseconds(sleepMs)
        if let path = connection.resolvedKafkaConfig { configuration.workerEnvironment["BATON_KAFKA_CONFIG"] = path }
        if let wait = connection.resolvedFetchWait { configuration.workerEnvironment["BATON_FETCH_WAIT"] = wait }
        let suite = ConformanceSuite(configuration: configuration, logger: logger)
        print("baton conformance: pool '\(pool)' in namespace '\(namespace)' on \(connection.resolvedBrokers); worker: \(worker)")
        print("the worker's output: \(logDirectory.path)")
        fflush(nil)

        // The suite runs until it is done or a signal comes; then it is cancelled, and stops the worker itself.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let outcomes: [ConformanceOutcome]? = try await withThrowingTaskGroup(of: [ConformanceOutcome]?.self) { group in
            group.addTask {
                do {
                    return try await suite.run { outcome in
                        for line in outcome.lines { print(line) }
                        fflush(nil)
                    }
                } catch let error as ClientError {
                    throw CLIFailure(error)
                }
            }
            group.addTask {
                for await signal in signals {
                    FileHandle.standardError.write(Data("\(signal): stopping the worker\n".utf8))
                    return nil
                }
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            // The suite's task stops the worker before it returns, cancelled or not.
            while let _ = try? await group.next() {}
            return first
        }
        guard let outcomes else { throw ExitCode(130) }
        let failed = outcomes.count { !$0.passed }
        print("\(outcomes.count - failed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}

/// The Swift SDK's worker for `baton conformance`: a StepWorker of one pool with the conformance handler.
struct ConformanceWorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance-worker",
        abstract: "Run the Swift SDK's conformance worker for one pool (baton conformance --worker \"baton conformance-worker\").")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The worker pool (default: $BATON_POOL, which baton conformance sets).") var pool: String?
    @Option(help: "Commands handled at once.") var concurrency = 32
    @Option(help: .hidden) var fault: Fault?

    /// Deliberate mistakes, to see `baton conformance` catch them.
    enum Fault: String, ExpressibleByArgument {
        /// Runs commands however late they come (the deadline case fails).
        case lateCommands = "late-commands"
        /// Remembers a step's output by idempotency key alone and gives it for every attempt (old-attempt fails).
        case attemptCache = "attempt-cache"
    }

    func run() async throws {
        guard let pool = pool ?? connection.environment["BATON_POOL"].flatMap({ $0.isEmpty ? nil : $0 }) else {
            throw CLIFailure("no pool: give --pool, or set BATON_POOL")
        }
        let logger = connection.makeLogger("baton.conformance-worker", default: .info)
        var configuration = WorkerConfiguration(client: try connection.clientConfiguration, names: connection.names, pool: pool)
        configuration.gapRereads = connection.resolvedGapRereads
        configuration.concurrency = concurrency
        var handler = ConformanceWorker.handler
        switch fault {
        case .lateCommands:
            configuration.deadlineMargin = .seconds(365 * 86_400)
        case .attemptCache:
            let outputs = Mutex<[String: JSON]>([:])
            let real = handler
            handler = { ctx in
                if let cached = outputs.withLock({ $0[ctx.idempotencyKey] }) { return cached }
                let output = try await real(ctx)
                outputs.withLock { $0[ctx.idempotencyKey] = output }
                return output
            }
        case nil:
            break
        }
        if let fault { logger.warning("running with a deliberate fault: \(fault.rawValue)") }
        let worker = StepWorker(configuration: configuration, logger: logger, handler: handler)
        try await runServices([worker], logger: logger)
    }
}

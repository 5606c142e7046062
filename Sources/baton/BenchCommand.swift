import ArgumentParser
import BatonClient
import BatonCore
import BatonKafka
import BatonOperatorTools
import BatonRuntime
import BatonTopics
import BatonWire
import Foundation
import Logging
import Synchronization

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure throughput and latency through the real broker (not a test).",
        discussion: """
            Creates a fresh namespace, starts coordinators and the example workers as child processes (as they are \
            deployed), offers N instances of a workflow at a rate, and reports workflows/s, steps/s and \
            start-to-finish latency percentiles (from sending the start to seeing the completed state).
            """)

    enum Shape: String, ExpressibleByArgument, CaseIterable {
        /// The seed's 5-step order fulfillment: validate, reserve, charge, ship, notify.
        case order
        /// A fan-out/fan-in DAG: one step, four in parallel, one after them.
        case fanout
        /// One human task: instances wait for a person. For memory per held instance and rebuild speed.
        case hold
    }

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "order (5 steps in a chain), fanout (1, then 4 in parallel, then 1), or hold (instances wait for a person: measures memory per instance and the rebuild).")
    var workflow: Shape = .order
    @Option(help: "Instances to run.") var instances = 5000
    @Option(help: "Instances offered per second; 0 sends them as fast as possible.") var rate = 0
    @Option(help: "Coordinator processes.") var coordinators = 1
    @Option(help: "Partitions of the events and state topics in the bench namespace.") var partitions = 12
    @Option(help: "Seconds to wait for the instances to finish.") var deadline = 300
    @Flag(help: "Audit offsets at the end: for every instance that did not finish, where it stopped (see docs/benchmarks.md); exits 1 when any did not.")
    var audit = false
    @Flag(
        inversion: .prefixedNo,
        help: "Run the coordinators and workers with their metrics served (--metrics-port 0) and print where a step's time goes from them; --no-metrics to measure without.")
    var metrics = true
    @Flag(help: "Write the records the instances would make (starts, commands, results, snapshots, outputs) through the broker without the engine, in its pattern (transactions per partition), and read them back: the broker's bound for this workload on this machine.")
    var raw = false
    @Option(help: ArgumentHelp("Give every step this timeout (such as 30s), to see that a busy engine times out nothing healthy (a step's timeout counts from its start).", valueName: "duration"))
    var stepTimeout: String?
    @Flag(help: "With --step-timeout: also start, halfway through the offer, one instance whose only step hangs (one attempt; the example worker sleeps 300 s for an order_id containing 'slow', and this instance's order_id is its id), and print how long after the worker started it the step timed out.")
    var hungStep = false
    @Option(help: ArgumentHelp("Run the coordinators and workers with tracing on, exporting to this OTLP/HTTP endpoint: to measure what tracing costs.", valueName: "url"))
    var otlpEndpoint: String?

    static let definitions: [Shape: String] = [
        .order: #"{"workflow_id":"bench_order","steps":[{"id":"validate","type":"service_call","depends_on":[]},{"id":"reserve","type":"service_call","depends_on":["validate"]},{"id":"charge","type":"service_call","depends_on":["reserve"]},{"id":"ship","type":"service_call","depends_on":["charge"]},{"id":"notify","type":"notification","depends_on":["ship"]}]}"#,
        .fanout: #"{"workflow_id":"bench_fanout","steps":[{"id":"split","type":"service_call"},{"id":"a","type":"service_call","depends_on":["split"]},{"id":"b","type":"service_call","depends_on":["split"]},{"id":"c","type":"service_call","depends_on":["split"]},{"id":"d","type":"service_call","depends_on":["split"]},{"id":"join","type":"notification","depends_on":["a","b","c","d"]}]}"#,
        .hold: #"{"workflow_id":"bench_hold","steps":[{"id":"approve","type":"human_task","assignee":"role:bench","timeout":"48h"}]}"#,
    ]

    func run() async throws {
        let logger = connection.makeLogger("baton.bench")
        let namespace = connection.namespace ?? "bench-\(UUID().uuidString.prefix(8).lowercased())"
        let names = TopicNames(namespace: namespace)
        let clientConfiguration = try connection.clientConfiguration
        let admin = try KafkaAdmin(configuration: clientConfiguration, logger: logger)
        var specs = try loadSpecs()
        for i in specs.indices where specs[i].isKeyed { specs[i].partitions = partitions }
        _ = try await TopicApplier(admin: admin, namespace: namespace, replicationFactor: 1, logger: logger).apply(specs)
        let client = try BatonClient(client: clientConfiguration, names: names, logger: logger)
        var definition = Self.definitions[workflow]!
        if let stepTimeout {
            guard Millis.parse(stepTimeout) != nil else { throw CLIFailure("--step-timeout: '\(stepTimeout)' is not a duration such as 30s") }
            definition = definition.replacingOccurrences(of: #""type":"service_call""#, with: #""type":"service_call","timeout":"\#(stepTimeout)""#)
                .replacingOccurrences(of: #""type":"notification""#, with: #""type":"notification","timeout":"\#(stepTimeout)""#)
        }
        let workflow = try await client.register(document: Data(definition.utf8))
        let hung: (workflow: Workflow, id: String)?
        if hungStep {
            guard let stepTimeout else { throw CLIFailure("--hung-step needs --step-timeout: the hung step times out after it") }
            let document = #"{"workflow_id":"bench_hung","steps":[{"id":"validate","type":"service_call","timeout":"\#(stepTimeout)","retry":{"max_attempts":1}}]}"#
            hung = (try await client.register(document: Data(document.utf8)), "hung-slow-\(UUID().uuidString.prefix(8).lowercased())")
        } else {
            hung = nil
        }
        let steps = workflow.steps.count
        if raw {
            try await runRaw(workflow: workflow, names: names, client: clientConfiguration, logger: logger)
            await client.close()
            return
        }
        try await InstanceWatcher.watching(client: clientConfiguration, names: names, logger: logger, light: true) { watcher in

            let children = ChildProcesses()

            children.stopOnInterrupt()
            try children.ensureKeys()
            let common = ["--namespace", namespace] + connection.childArguments + (metrics ? ["--metrics-port", "0"] : []) + (otlpEndpoint.map { ["--otlp-endpoint", $0] } ?? [])
            var coordinatorProcesses: [Process] = []
            for i in 0..<coordinators { coordinatorProcesses.append(try children.spawn("coordinator-\(i)", ["coordinator"] + common)) }
            let workerProcess = try children.spawn("workers", ["example-workers", "--pool", "service_call", "--pool", "notification", "--concurrency", "256"] + common)
            print("namespace \(namespace); \(coordinators) coordinator(s) and the example workers running (logs in \(children.logDirectory.path))")
            fflush(nil)  // every stream: a script or test that runs the bench waits for this line

            // Warm up until the whole pipeline answers: groups joined, partitions taken.
            let holding = self.workflow == .hold
            let reached: Set<InstanceStatus> = holding ? [.waiting] : [.completed, .failed]
            let warm = (0..<20).map { "warmup-\($0)" }
            for id in warm { try await client.start(workflowID: workflow.id, input: [:], instanceID: id, partitions: partitions) }
            guard await watcher.wait(for: Set(warm), toBe: holding ? [.waiting] : [.completed], timeout: .seconds(120)) else {
                children.stopAll()
                throw CLIFailure("the warm-up instances did not complete within 120 s; see the logs in \(children.logDirectory.path)")
            }
            let residentBefore = coordinatorProcesses.compactMap(ChildProcesses.residentBytes).reduce(0, +)

            print("offering \(instances) instances of \(workflow.id) (\(steps) steps) \(rate > 0 ? "at \(rate)/s" : "as fast as possible")")
            // CPU time of each process over the run: the engine's, this client's, and the broker's when it runs here.
            let cpuMeter = CPUMeter(
                coordinatorProcesses.enumerated().map { ("coordinator-\($0.offset)", $0.element.processIdentifier) }
                    + [("workers", workerProcess.processIdentifier), ("bench client", ProcessInfo.processInfo.processIdentifier)],
                brokers: clientConfiguration.brokers.bootstrapServers)
            var sentAt: [String: Int64] = [:]
            sentAt.reserveCapacity(instances)
            let clock = ContinuousClock()
            let began = clock.now
            let firstSend = nowMillis()
            for i in 0..<instances {
                if let hung, i == instances / 2 {
                    try await client.start(workflowID: hung.workflow.id, input: ["order_id": .string(hung.id)], instanceID: hung.id, partitions: partitions, wait: false)
                }
                if rate > 0 {
                    let due = began + .milliseconds(Int64(i) * 1000 / Int64(rate))
                    if due > clock.now { try await Task.sleep(until: due, clock: clock) }
                }
                let id = "b\(i)-\(UUID().uuidString.prefix(8))"
                sentAt[id] = nowMillis()
                // Refused after waiting for coordinators that stay behind (BATON_START_MAX_WAIT): sent again, as a
                // client would; the count is in the report.
                while true {
                    do {
                        try await client.start(workflowID: workflow.id, input: ["order_id": .string(id)], instanceID: id, partitions: partitions, wait: false)
                        break
                    } catch let error as ClientError where error.retryAfter != nil {
                        continue
                    }
                }
            }
            try await client.flush()
            let offeredFor = clock.now - began
            let ids = Array(sentAt.keys)
            let progress = Mutex(0)
            /// The workers' largest resident memory seen over the run (sampled every 2 s).
            let workerResident = Mutex(0)
            let done = await withProgress(every: .seconds(2)) {
                if let bytes = ChildProcesses.residentBytes(workerProcess) { workerResident.withLock { $0 = max($0, bytes) } }
                let count = ids.count { (holding ? watcher.waitingSeenAt($0) : watcher.finishedSeenAt($0)) != nil }
                let last = progress.withLock { last in defer { last = count }; return last }
                return "progress: \(count) of \(ids.count) \(holding ? "waiting" : "finished") (\((count - last) / 2)/s)"
            } _: {
                await watcher.wait(for: Set(ids), toBe: reached, timeout: .seconds(deadline))
            }
            func reachedAt(_ id: String) -> Int64? { holding ? watcher.waitingSeenAt(id) : watcher.finishedSeenAt(id) }
            let stragglers = Set(sentAt.keys.filter { reachedAt($0) == nil })
            let wall = clock.now - began
            let cpu = cpuMeter.report(over: wall.inSeconds)
            let breakdown = metrics
                ? Self.breakdown(coordinator: await Self.scrape(children.log("coordinator-0")), workers: await Self.scrape(children.log("workers"))) : nil
            var hungReport: String?
            if let hung { hungReport = try await measureHung(hung.id, watcher: watcher, client: client, names: names) }
            let held = holding ? try await measureHeld(sentAt.count + warm.count, coordinators: coordinatorProcesses, residentBefore: residentBefore, children: children, common: common) : nil
            children.stopAll()
            // Audited once nothing moves any more: what a group committed then is final.
            let report = audit ? try await OffsetAudit.run(client: client, instanceIDs: stragglers, logger: logger) : nil
            await client.close()

            let finished = sentAt.keys.compactMap { id in reachedAt(id).map { (id, $0) } }
            let unfinished = sentAt.keys.filter { reachedAt($0) == nil }.sorted()
            for id in unfinished.prefix(10) {
                print("not finished: \(id) (last seen: \(watcher.status(id)?.rawValue ?? "never"))")
            }
            let latencies = finished.map { Double($0.1 - sentAt[$0.0]!) }.sorted()
            guard let lastFinish = finished.map(\.1).max(), !latencies.isEmpty else { throw CLIFailure("no instance finished") }
            let seconds = Double(lastFinish - firstSend) / 1000
            let completed = sentAt.keys.filter { watcher.status($0) == .completed }.count
            func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int((p * Double(latencies.count)).rounded(.up)) - 1)] }
            print(String(format: "offered %d in %.2f s (%.0f/s); %d of them finished%@", instances, offeredFor.inSeconds,
                         Double(instances) / max(0.001, offeredFor.inSeconds), finished.count, done ? "" : " (deadline reached)"))
            let waits = client.startWaits
            if waits.count > 0 || waits.refused > 0 {
                print(
                    "starts held for the coordinators (BATON_START_MAX_DELAY): \(waits.count), \(waits.total.inMilliseconds / 1000) s in all, the longest \(waits.longest.inMilliseconds) ms; \(waits.refused) refused"
                )
            }
            print(String(format: "throughput: %.0f workflows/s, %.0f steps/s (%d completed) over %.2f s", Double(finished.count) / seconds, Double(finished.count * steps) / seconds, completed, seconds))
            print(String(format: "latency start-to-\(holding ? "waiting" : "finish"): p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, max %.0f ms", percentile(0.50), percentile(0.95), percentile(0.99), latencies.last!))
            let failed = sentAt.keys.filter { watcher.status($0) == .failed }.count
            let suspended = sentAt.keys.filter { watcher.status($0) == .suspended }.count
            print("outcomes: \(completed) completed, \(failed) failed, \(suspended) suspended, \(unfinished.count) not finished")
            print(String(format: "workers: at most %.0f MB resident over the run", Double(workerResident.withLock { $0 }) / 1e6))
            print(cpu)
            if let breakdown { print(breakdown) }
            if let held { print(held) }
            if let hungReport { print(hungReport) }
            if let report {
                let reread = children.logLines(containing: "the broker showed later records before earlier ones").count
                print("audit: \(reread) out-of-order read(s) seen (and read again) by the coordinators")
                if report.entries.isEmpty {
                    print("audit: every instance finished")
                } else {
                    for (finding, count) in report.counts.sorted(by: { $0.value > $1.value }) { print("audit: \(count) \(finding.rawValue)") }
                    for entry in report.entries.prefix(20) { print("audit:   \(entry)") }
                    throw ExitCode(1)
                }
            }
        }
    }
}

extension Bench {
    func runRaw(workflow: Workflow, names: TopicNames, client: KafkaClientConfiguration, logger: Logger) async throws {
        try await CommandTopics(admin: KafkaAdmin(configuration: client, logger: logger), logger: logger)
            .ensure(Set(workflow.steps.map { names.commands($0.pool) }))
        let bench = RawBench(names: names, client: client, workflow: workflow, instances: instances, partitions: partitions, logger: logger)
        print("raw: the records of \(instances) instances of \(workflow.id) (\(workflow.steps.count) steps), without the engine")
        let cpuMeter = CPUMeter([("bench client", ProcessInfo.processInfo.processIdentifier)], brokers: client.brokers.bootstrapServers)
        let report = try await bench.run()
        let cpu = cpuMeter.report(over: report.seconds)
        print(String(format: "raw: %d records (%.1f per instance, %.1f MB) written and read back in %.2f s: %.0f records/s, the records of %.0f workflows/s",
                     report.records, Double(report.records) / Double(max(1, instances)), Double(report.bytes) / 1e6, report.seconds, Double(report.records) / report.seconds,
                     Double(instances) / report.seconds))
        print(cpu)
    }

    /// The hung instance's step: how long after the worker started it (its start report's CreateTime, less the
    /// 500 ms a worker waits before it reports) the coordinator failed it.
    func measureHung(_ id: String, watcher: InstanceWatcher, client: BatonClient, names: TopicNames) async throws -> String {
        guard await watcher.wait(for: [id], toBe: [.failed, .suspended], timeout: .seconds(600)) else {
            return "hung step: \(id) has not ended within 600 s more (last seen: \(watcher.status(id)?.rawValue ?? "never"))"
        }
        guard let state = try await client.status(instanceID: id), let failedAt = state.steps.first?.finishedAt else {
            return "hung step: the state of \(id) could not be read"
        }
        var reported: Int64?
        let partition = KafkaPartitioner.partition(forKey: id, partitionCount: partitions)
        try await client.readToEnd([TopicPartition(names.events, partition)]) { m in
            guard reported == nil, m.keyString == id, let value = m.value, (try? Wire.kind(of: value)) == .stepHeartbeat else { return }  // not a heartbeat
            reported = m.timestamp
        }
        let reason = state.steps.first?.error ?? state.reason ?? ""
        guard let reported else { return "hung step: \(id) \(state.status.rawValue) with no start report (\(reason))" }
        let started = reported - 500
        return String(format: "hung step: %@ %.1f s after the worker started it (step timeout %@): %@", state.status.rawValue, Double(failedAt - started) / 1000, stepTimeout ?? "", reason)
    }

    /// With `count` instances held: the coordinators' resident memory per instance, then a new coordinator's
    /// rebuild of them (time, records and instances per second, from its "rebuilt partition" lines) and its memory.
    func measureHeld(_ count: Int, coordinators: [Process], residentBefore: Int, children: ChildProcesses, common: [String]) async throws -> String {
        let residentAfter = coordinators.compactMap(ChildProcesses.residentBytes).reduce(0, +)
        var lines = [String(format: "memory: %.0f MB resident with %d instances held, %.0f MB before: %.0f bytes per held instance",
                            Double(residentAfter) / 1e6, count, Double(residentBefore) / 1e6, Double(residentAfter - residentBefore) / Double(max(1, count)))]
        for process in coordinators { children.stop(process) }
        let clock = ContinuousClock()
        let started = clock.now
        let fresh = try children.spawn("coordinator-rebuild", ["coordinator"] + common)
        var took: [(ms: Int, instances: Int, records: Int)] = []
        while took.count < partitions, clock.now - started < .seconds(3600) {
            try await Task.sleep(for: .milliseconds(200))  // polling a child's log file: no event to wait on
            took = children.log("coordinator-rebuild").split(separator: "\n").filter { $0.contains("rebuilt partition") }.compactMap { line in
                func field(_ name: String) -> Int? { line.split(separator: " ").first { $0.hasPrefix("\(name)=") }.flatMap { Int($0.dropFirst(name.count + 1)) } }
                guard let ms = field("ms"), let instances = field("instances"), let records = field("records") else { return nil }
                return (ms, instances, records)
            }
        }
        let wall = clock.now - started
        let slowest = took.map(\.ms).max() ?? 0
        let instances = took.map(\.instances).reduce(0, +)
        let records = took.map(\.records).reduce(0, +)
        lines.append(String(format: "rebuild: %d instances from %d records in %.2f s (slowest of %d partitions; %.0f instances/s, %.0f records/s); process up and rebuilt in %.2f s",
                            instances, records, Double(slowest) / 1000, took.count, Double(instances) / max(0.001, Double(slowest) / 1000),
                            Double(records) / max(0.001, Double(slowest) / 1000), wall.inSeconds))
        if let rebuilt = ChildProcesses.residentBytes(fresh) {
            lines.append(String(format: "memory after the rebuild: %.0f MB resident, %.0f bytes per held instance (all in)", Double(rebuilt) / 1e6, Double(rebuilt) / Double(max(1, instances))))
        }
        return lines.joined(separator: "\n")
    }
}

func nowMillis() -> Int64 { WallClock.millis() }

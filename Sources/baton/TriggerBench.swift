import ArgumentParser
import BatonClient
import BatonCore
import BatonKafka
import BatonTopics
import BatonTriggers
import BatonWire
import Foundation
import Logging

struct TriggerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-triggers",
        abstract: "Measure triggered starts through the real broker: business records in, instances started (not a test).",
        discussion: """
            Creates a fresh namespace and business topic, registers a one-step workflow with a trigger on the topic, \
            produces N records to it as fast as possible (or at `--rate`), and runs `baton triggers`, a coordinator and the example \
            workers as child processes (as they are deployed). Reports triggered starts per second (from the first \
            record produced to the last instance's first state snapshot) and the latency from a business record \
            (its timestamp) to its instance's first command (that command's timestamp on its command topic).
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Business records to produce (each starts one instance).") var records = 5000
    @Option(help: "Partitions of the business topic and of the engine's keyed topics in the bench namespace.") var partitions = 3
    @Option(help: "Records produced per second; 0 produces them as fast as possible (a burst).") var rate = 0
    @Option(help: "Seconds to wait for the instances to complete.") var deadline = 300

    static func definition(topic: String) -> String {
        #"{"workflow_id":"bench_triggered","triggers":[{"topic":"\#(topic)","instance_id":"$.event.value.order_id"}],"steps":[{"id":"validate","type":"service_call"}]}"#
    }

    func run() async throws {
        let logger = connection.makeLogger("baton.bench")
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let namespace = connection.namespace ?? "bench-\(suffix)"
        let names = TopicNames(namespace: namespace)
        let topic = "bench-orders-\(suffix)"
        let clientConfiguration = try connection.clientConfiguration
        let admin = try KafkaAdmin(configuration: clientConfiguration, logger: logger)
        var specs = try loadSpecs()
        for i in specs.indices where specs[i].isKeyed { specs[i].partitions = partitions }
        _ = try await TopicApplier(admin: admin, namespace: namespace, replicationFactor: 1, logger: logger).apply(specs)
        if let error = try await admin.createTopics([NewTopic(name: topic, partitions: partitions, replicationFactor: 1)])[topic] ?? nil {
            throw CLIFailure("cannot create the business topic \(topic): \(error)")
        }
        let client = try BatonClient(client: clientConfiguration, names: names, logger: logger)
        let workflow = try await client.register(document: Data(Self.definition(topic: topic).utf8))
        try await InstanceWatcher.watching(client: clientConfiguration, names: names, logger: logger, light: true) { watcher in
            let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: clientConfiguration), logger: logger)

            let children = ChildProcesses()

            children.stopOnInterrupt()
            try children.ensureKeys()
            let common = ["--namespace", namespace] + connection.childArguments
            let coordinator = try children.spawn("coordinator", ["coordinator"] + common)
            let workers = try children.spawn("workers", ["example-workers", "--pool", "service_call", "--concurrency", "256"] + common)
            let triggers = try children.spawn("triggers", ["triggers"] + common)
            print("namespace \(namespace), business topic \(topic) (\(partitions) partitions); triggers, a coordinator and the example workers running (logs in \(children.logDirectory.path))")

            func produce(_ ids: [String], rate: Int = 0) async throws {
                let clock = ContinuousClock()
                let began = clock.now
                for (i, id) in ids.enumerated() {
                    if rate > 0 {
                        let due = began + .milliseconds(Int64(i) * 1000 / Int64(rate))
                        if due > clock.now { try await Task.sleep(until: due, clock: clock) }
                    }
                    try await producer.enqueue(ProducerRecord(topic: topic, key: id, value: Data(#"{"order_id":"\#(id)","amount":42}"#.utf8)))
                }
                try await producer.flush()
            }
            // Warm up until the whole pipeline answers: groups joined, partitions taken, producers initialised.
            let warm = (0..<20).map { "warmup-\($0)" }
            try await produce(warm)
            guard await watcher.wait(for: Set(warm), toBe: [.completed], timeout: .seconds(120)) else {
                children.stopAll()
                throw CLIFailure("the warm-up records did not complete their instances within 120 s; see the logs in \(children.logDirectory.path)")
            }

            print("producing \(records) records to \(topic) \(rate > 0 ? "at \(rate)/s" : "as fast as possible")")
            let cpuMeter = CPUMeter(
                [("triggers", triggers.processIdentifier), ("coordinator", coordinator.processIdentifier), ("workers", workers.processIdentifier),
                 ("bench client", ProcessInfo.processInfo.processIdentifier)],
                brokers: clientConfiguration.brokers.bootstrapServers)
            let ids = (0..<records).map { "t\($0)-\(suffix)" }
            let clock = ContinuousClock()
            let began = clock.now
            try await produce(ids, rate: rate)
            let producedFor = clock.now - began
            let done = await withProgress(every: .seconds(2)) {
                "progress: \(ids.count { watcher.status($0) != nil }) of \(ids.count) started, \(ids.count { watcher.finishedSeenAt($0) != nil }) completed"
            } _: {
                await watcher.wait(for: Set(ids), toBe: [.completed], timeout: .seconds(deadline))
            }
            let wall = clock.now - began
            let cpu = cpuMeter.report(over: wall.inSeconds)
            children.stopAll()
            await producer.close()

            // The timestamps, from the topics: each record's, its instance's first snapshot's, its first command's.
            let wanted = Set(ids)
            var produced: [String: Int64] = [:]
            _ = try await client.readAll(topic) { m in
                if let id = m.keyString, wanted.contains(id), let ts = m.timestamp { produced[id] = min(produced[id] ?? .max, ts) }
            }
            var started: [String: Int64] = [:]
            _ = try await client.readAll(names.state) { m in
                if let id = m.keyString, wanted.contains(id), let ts = m.timestamp { started[id] = min(started[id] ?? .max, ts) }
            }
            var commanded: [String: Int64] = [:]
            _ = try await client.readAll(names.commands(workflow.steps[0].pool)) { m in
                if let id = m.keyString, wanted.contains(id), let ts = m.timestamp { commanded[id] = min(commanded[id] ?? .max, ts) }
            }
            await client.close()

            guard let firstProduced = produced.values.min(), let lastStarted = started.values.max() else { throw CLIFailure("no instance started") }
            let seconds = Double(lastStarted - firstProduced) / 1000
            let producedSeconds = producedFor.inSeconds
            let latencies = ids.compactMap { id -> Double? in
                guard let p = produced[id], let c = commanded[id] else { return nil }
                return Double(c - p)
            }.sorted()
            func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, max(0, Int((p * Double(latencies.count)).rounded(.up)) - 1))] }
            print(String(format: "produced %d records in %.2f s (%.0f/s); %d instances started, %d completed%@", records, producedSeconds, Double(records) / max(0.001, producedSeconds),
                         started.count, ids.count { watcher.finishedSeenAt($0) != nil }, done ? "" : " (deadline reached)"))
            print(String(format: "triggered starts: %.0f/s (%d starts from the first record produced to the last instance started, %.2f s)", Double(started.count) / max(0.001, seconds), started.count, seconds))
            if !latencies.isEmpty {
                print(String(format: "event to first command: p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, max %.0f ms (%d instances)", percentile(0.50), percentile(0.95), percentile(0.99),
                             latencies.last!, latencies.count))
            }
            print(cpu)
            let deadLetters = children.logLines(containing: "dead letter").count
            if deadLetters > 0 { print("dead letters logged by the processes: \(deadLetters)") }
        }
    }
}

import BatonClient
import BatonCoordinator
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonTopics
import BatonWire
import BatonWorker
import Foundation
import Testing

@Suite("Production faults: starts that answer, oversized records, retention", .serialized, .timeLimit(.minutes(4)))
struct StartAndRetentionTests {
    /// The same id again with the same input says it exists (exit 0); with another input or workflow it is
    /// refused as a conflict (exit 3), and the refused start is on the dead-letter topic with the reason.
    @Test func aSecondStartOfAnIdAnswersExistsOrConflictFromTheCommandLine() async throws {
        try await withEngine(partitions: 2) { engine in
            _ = try await engine.register("workflow_id: doc\nsteps: [{ id: draft, type: svc }]")
            _ = try await engine.register("workflow_id: memo\nsteps: [{ id: draft, type: svc }]")
            engine.startCoordinator()
            let first = try await engine.baton(["start", "doc", "--id", "doc-1", "--input", #"{"title": "hello", "n": 1}"#])
            #expect(first.status == 0, "\(first.output)")
            #expect(first.output.trimmingCharacters(in: .whitespacesAndNewlines) == "doc-1")
            // Key order does not make another input.
            let again = try await engine.baton(["start", "doc", "--id", "doc-1", "--input", #"{"n": 1, "title": "hello"}"#])
            #expect(again.status == 0, "\(again.output)")
            #expect(again.output.contains("'doc-1' exists already with the same workflow and input"), "\(again.output)")
            let otherInput = try await engine.baton(["start", "doc", "--id", "doc-1", "--input", #"{"title": "bye"}"#])
            #expect(otherInput.status == 3, "\(otherInput.output)")
            #expect(otherInput.output.contains("conflict: 'doc-1' exists already as doc v1"), "\(otherInput.output)")
            #expect(otherInput.output.contains(#"{"n":1,"title":"hello"}"#), "the conflict shows the input that runs: \(otherInput.output)")
            let otherWorkflow = try await engine.baton(["start", "memo", "--id", "doc-1", "--input", #"{"title": "hello", "n": 1}"#])
            #expect(otherWorkflow.status == 3, "\(otherWorkflow.output)")
            // The instance runs the first input, untouched.
            #expect(try await engine.client.status(instanceID: "doc-1")?.input == ["title": "hello", "n": 1])

            // A start sent without waiting that conflicts is refused by the coordinator, on the dead-letter topic.
            _ = try await engine.client.start(workflowID: "doc", input: ["title": "sneaky"], instanceID: "doc-1", partitions: engine.partitions)
            try await waitUntil("the conflicting start to be dead-lettered") {
                try await engine.records(engine.names.deadletter).contains { m in
                    m.header(WireHeaders.deadLetterReason).map { String(decoding: $0, as: UTF8.self) }?.hasPrefix("conflict: instance 'doc-1' exists already") == true
                }
            }
        }
    }

    /// Concurrent starts of one id: exactly one creates it; every other caller learns which input runs.
    @Test func concurrentStartsOfOneIdCreateItOnceAndEveryCallerLearnsWhichInputRuns() async throws {
        try await withEngine(partitions: 2) { engine in
            _ = try await engine.register("workflow_id: doc\nsteps: [{ id: draft, type: svc }]")
            engine.startCoordinator()
            // Warm up: the coordinator owns its partitions before the race.
            _ = try await engine.client.startAndWait(workflowID: "doc", input: [:], instanceID: "warm", timeout: .seconds(60))
            let outcomes = try await withThrowingTaskGroup(of: (Int, BatonClient.StartOutcome).self) { group in
                for i in 0..<8 {
                    group.addTask {
                        let client = try BatonClient(client: engine.kafka, names: engine.names, logger: TestKafka.logger)
                        do {
                            let outcome = try await client.startAndWait(workflowID: "doc", input: ["caller": .number(Double(i % 4))], instanceID: "contested", timeout: .seconds(60))
                            await client.close()
                            return (i, outcome)
                        } catch {
                            await client.close()
                            throw error
                        }
                    }
                }
                var all: [(Int, BatonClient.StartOutcome)] = []
                for try await outcome in group { all.append(outcome) }
                return all
            }
            let created = outcomes.filter { if case .created = $0.1 { true } else { false } }
            #expect(created.count == 1, "\(outcomes.map { "\($0.0): \($0.1)" })")
            let running = try #require(try await engine.client.status(instanceID: "contested"))
            let winner = running.input["caller"]?.intValue
            for (i, outcome) in outcomes {
                // Everyone sees the same instance, with the winner's input...
                #expect(outcome.state.input == running.input)
                // ...and knows whether its own start is that one (same input) or refused (another input).
                switch outcome {
                case .created: #expect(i % 4 == winner)
                case .exists: #expect(i % 4 == winner)
                case .conflict: #expect(i % 4 != winner)
                }
            }
        }
    }

    /// Outputs too large to travel together: one instance makes a command over the broker's limit. That
    /// instance fails with the reason and is compensated; the twenty ordinary instances on the same partition
    /// complete, and the partition never stops.
    @Test func anInstanceWithOversizedRecordsFailsAloneAndTheOthersOnItsPartitionComplete() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("""
                workflow_id: big
                steps:
                  - { id: s1, type: svc, compensation: { type: undo } }
                  - { id: s2, type: svc, depends_on: [s1] }
                  - { id: s3, type: svc, depends_on: [s2] }
                  - { id: s4, type: svc, depends_on: [s3] }
                  - { id: s5, type: svc, depends_on: [s4] }
                  - id: s6
                    type: svc
                    depends_on: [s5]
                    input: { a: $.steps.s1.output, b: $.steps.s2.output, c: $.steps.s3.output, d: $.steps.s4.output, e: $.steps.s5.output }
                """)
            _ = try await engine.register("workflow_id: small\nsteps: [{ id: a, type: svc }, { id: b, type: svc, depends_on: [a] }]")
            engine.startCoordinator()
            let undone = Recorder<String>()
            engine.startWorker("svc", concurrency: 32) { ctx in
                // 240 KB each: under the 256 KiB output limit, but five of them make a 1.2 MB command.
                ctx.instanceID == "big" ? ["blob": .string(String(repeating: "x", count: 240_000))] : ["ok": true]
            }
            engine.startWorker("undo") { ctx in
                undone.add(ctx.step)
                return [:]
            }
            _ = try await engine.start("big", id: "big")
            var small: [String] = []
            for i in 0..<20 { small.append(try await engine.start("small", id: "small-\(i)")) }
            let big = try await engine.wait("big", for: [.failed, .completed, .suspended], timeout: .seconds(90))
            #expect(big.status == .failed)
            #expect(big.reason?.contains("the command for attempt 1 of 's6' cannot be written") == true, "\(big.reason ?? "")")
            #expect(big.reason?.contains("more than the limit of 990000") == true, "\(big.reason ?? "")")
            #expect(undone.all == ["s1"])
            #expect(await engine.watcher.wait(for: Set(small), toBe: [.completed], timeout: .seconds(60)))
            // The snapshot stays small: the outputs are on the outputs topic.
            let snapshots = try await engine.records(engine.names.state).filter { $0.keyString == "big" }
            #expect(snapshots.allSatisfy { ($0.value?.count ?? 0) < 10_000 }, "\(snapshots.map { $0.value?.count ?? 0 })")
            let alerts = try await engine.records(engine.names.alerts).compactMap { $0.value.flatMap { try? Wire.decode(AlertRecord.self, from: $0) } }
            #expect(alerts.contains { $0.alert.instanceID == "big" && $0.alert.message.contains("cannot be written") })
        }
    }

    /// When the local limit is above what librdkafka sends, librdkafka refuses the record itself: the
    /// instance goes on without it all the same, and the batch commits.
    @Test func aRecordRefusedOnTheWayFailsItsInstanceAndTheBatchCommits() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("""
                workflow_id: wide
                on_failure: { then: suspend }
                steps:
                  - { id: fan, type: svc }
                  - { id: gather, type: svc, depends_on: [fan], input: { x: $.steps.fan.output, y: $.steps.fan.output, z: $.steps.fan.output, w: $.steps.fan.output, v: $.steps.fan.output } }
                """)
            engine.startCoordinator { $0.maxRecordBytes = 8 << 20 }
            engine.startWorker("svc") { ctx in ctx.instanceID == "wide" ? ["blob": .string(String(repeating: "y", count: 250_000))] : ["ok": true] }
            _ = try await engine.start("wide", id: "wide")
            _ = try await engine.start("wide", id: "narrow")
            let wide = try await engine.wait("wide", for: [.suspended, .failed, .completed], timeout: .seconds(60))
            #expect(wide.status == .suspended)
            let reason = wide.reason ?? ""
            #expect(reason.contains("the command for attempt 1 of 'gather' cannot be written") && reason.contains("Message size too large"), "\(reason)")
            #expect(try await engine.wait("narrow", for: [.completed, .suspended]).status == .completed)
        }
    }

    /// A finished instance is tombstoned (state, outputs, tasks) when its retention runs out; a coordinator
    /// rebuilding the partition no longer has it, and the id can be used again.
    @Test func retentionTombstonesAFinishedInstanceAndARebuildNoLongerSeesIt() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("""
                workflow_id: brief
                retention: 3s
                steps:
                  - { id: a, type: svc }
                  - { id: ok, type: human_task, assignee: role:clerk, depends_on: [a] }
                """)
            let first = engine.startCoordinator()
            engine.startWorker("svc") { _ in ["kept": "for a while"] }
            _ = try await engine.client.startAndWait(workflowID: "brief", input: ["n": 1], instanceID: "b-1", timeout: .seconds(60))
            try await waitUntil("the task to open") { try await engine.client.tasks().contains { $0.status == .open } }
            let task = try #require(try await engine.client.tasks().first { $0.status == .open })
            _ = try await engine.client.decideAndWait(taskID: task.taskID, approve: true, as: .person("clara", "clerk"), comment: nil)
            let done = try await engine.wait("b-1", for: [.completed])
            #expect(done.steps[0].output == ["kept": "for a while"])
            #expect(done.timers.map(\.key.kind) == [.retention])
            // Tombstones follow 3 s after it finished.
            try await waitUntil("the instance's state to be tombstoned", timeout: .seconds(30)) {
                try await engine.records(engine.names.state).last { $0.keyString == "b-1" }.map { $0.value == nil } ?? false
            }
            let outputs = try await engine.records(engine.names.outputs).filter { $0.keyString?.hasPrefix("b-1/") == true }
            #expect(!outputs.isEmpty && Set(outputs.compactMap(\.keyString)).allSatisfy { key in outputs.last { $0.keyString == key }?.value == nil })
            #expect(try await engine.records(engine.names.tasks).last { $0.keyString == task.taskID }?.value == nil)
            #expect(try await engine.client.status(instanceID: "b-1") == nil)
            // A new coordinator rebuilds the partition without it: the same id with another input starts anew.
            await engine.stopCoordinator(first)
            engine.startCoordinator()
            let again = try await engine.client.startAndWait(workflowID: "brief", input: ["n": 2], instanceID: "b-1", timeout: .seconds(60))
            guard case .created(let fresh) = again else {
                Issue.record("expected a new instance, got \(again)")
                return
            }
            #expect(fresh.input == ["n": 2])
        }
    }
}

@Suite("Production faults: a partition that cannot be taken", .serialized, .timeLimit(.minutes(3)))
struct UntakeablePartitionTests {
    /// A coordinator that cannot take its partitions (here: the outputs topic was never created) tries again
    /// with a growing wait, not in a hot loop; the on-call gets a critical alert naming the partition and the
    /// cause; once an operator creates the topic, the partitions are taken, the waiting start runs, and the
    /// on-call hears that it is over.
    @Test func aPartitionThatCannotBeTakenBacksOffAlertsAndRecoversWhenFixed() async throws {
        let names = TopicNames(namespace: TestKafka.uniqueName("untaken"))
        var specs = try TopicSpecLoader.load(directory: repositoryRoot.appendingPathComponent("topics"))
        for i in specs.indices where specs[i].isKeyed { specs[i].partitions = 2 }
        let outputs = try #require(specs.first { $0.name == "outputs" })
        specs.removeAll { $0.name == "outputs" }
        _ = try await TopicApplier(admin: try TestKafka.admin(), namespace: names.namespace, replicationFactor: 1, logger: TestKafka.logger).apply(specs)
        let client = try BatonClient(client: TestKafka.client, names: names, logger: TestKafka.logger)
        _ = try await client.register(document: Data("workflow_id: w\nsteps: [{ id: a, type: svc }]".utf8))
        var configuration = CoordinatorConfiguration(client: TestKafka.client, names: names, security: TestKeys.security)
        configuration.sessionTimeout = .seconds(6)
        configuration.maxPollInterval = .seconds(6)
        configuration.alertAfterFailures = 3
        configuration.maxBackoff = .milliseconds(400)
        let coordinator = Coordinator(configuration: configuration, logger: TestKafka.logger)
        let running = Task { try await coordinator.run() }
        var worker = WorkerConfiguration(client: TestKafka.client, names: names, pool: "svc")
        worker.sessionTimeout = .seconds(6)
        worker.maxPollInterval = .seconds(6)
        let svc = StepWorker(configuration: worker, logger: TestKafka.logger) { _ in ["ok": true] }
        let serving = Task { try await svc.run() }
        defer {
            coordinator.stop()
            svc.stop()
            running.cancel()
            serving.cancel()
        }
        func alerts() async throws -> [AlertMessage] {
            var out: [AlertMessage] = []
            try await client.readAll(names.alerts) { m in
                if let value = m.value, let r = try? Wire.decode(AlertRecord.self, from: value) { out.append(r.alert) }
            }
            return out
        }
        try await waitUntil("a critical alert about a partition that cannot be taken", timeout: .seconds(60)) {
            try await alerts().contains { a in
                a.severity == .critical && a.instanceID == nil && a.partition != nil && a.message.contains("cannot take events partition")
                    && a.message.contains("\(names.outputs) does not exist")
            }
        }
        let id = try await client.start(workflowID: "w", input: [:], instanceID: "waits-for-the-fix")
        // The operator's fix.
        try await TestKafka.createTopic(names.outputs, partitions: 2, configs: outputs.configs)
        try await waitUntil("the instance to complete once the partitions are taken", timeout: .seconds(60)) {
            try await client.status(instanceID: id)?.status == .completed
        }
        try await waitUntil("the on-call to hear that it is over", timeout: .seconds(30)) {
            try await alerts().contains { $0.severity == .warning && $0.message.contains("takes events partition") && $0.message.contains("again after") }
        }
        coordinator.stop()
        svc.stop()
        try await running.value
        try await serving.value
        await client.close()
    }
}

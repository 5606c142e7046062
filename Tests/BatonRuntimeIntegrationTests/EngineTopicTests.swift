import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonServer
import BatonTestSupport
import BatonTopics
import BatonWire
import Foundation
import Testing

extension OneAtATime {
    /// Issue 20: processes check the engine topics they use at start and watch them while they run; a namespace
    /// whose topics drifted, vanished or were recreated stops them with status 78, said at critical level.
    @Suite("Engine topics: drift refused, a wiped cluster detected", .serialized, .timeLimit(.minutes(6)))
    struct EngineTopicTests {
        /// The built-in specs with `partitions` for every keyed topic (as the engine tests apply them).
        static func specs(partitions: Int) throws -> [TopicSpec] {
            var specs = try TopicSpecLoader.builtIn()
            for i in specs.indices where specs[i].isKeyed { specs[i].partitions = partitions }
            return specs
        }

        /// The exit status of a process that should end by itself within `timeout`.
        static func exitStatus(_ process: BatonProcess, _ what: String, within timeout: Duration = .seconds(60)) async throws -> Int32 {
            try await waitUntil("\(what) to exit; its log ends:\n\(process.output.suffix(2000))", timeout: timeout) { !process.isRunning }
            return await process.exitStatus()
        }

        @Test func aCoordinatorRefusesADriftedNamespaceNamingEachTopicAndWhyAndBatonCheckExitsNonZero() async throws {
            let namespace = TestKafka.uniqueName("drift")
            var specs = try Self.specs(partitions: 3)
            for i in specs.indices {
                if specs[i].name == "events" { specs[i].partitions = 2 }  // events no longer co-partitioned with state, mailboxes...
                if specs[i].name == "state" { specs[i].configs["cleanup.policy"] = "delete" }  // a state topic not compacted
            }
            _ = try await TopicApplier(admin: TestKafka.admin(), namespace: namespace, replicationFactor: 1, logger: TestKafka.logger).apply(specs)

            let coordinator = try BatonProcess(["coordinator"], namespace: namespace)
            defer { coordinator.kill9() }
            let status = try await Self.exitStatus(coordinator, "a coordinator on a drifted namespace")
            let log = coordinator.output
            #expect(status == EngineTopicGuard.exitStatus, "it exited with \(status):\n\(log.suffix(3000))")
            #expect(log.contains("critical"), "the refusal is not at critical level:\n\(log.suffix(3000))")
            #expect(log.contains("\(namespace).state: config cleanup.policy is delete, declared compact"), "\(log.suffix(3000))")
            #expect(log.contains("\(namespace).mailboxes: partitions is 3, declared 2, as \(namespace).events"), "\(log.suffix(3000))")
            #expect(!log.contains("coordinator started"), "it ran before refusing:\n\(log.suffix(3000))")

            let check = try BatonProcess(["check"], namespace: namespace)
            let checked = try await Self.exitStatus(check, "baton check", within: .seconds(30))
            #expect(checked != 0, "baton check passed a drifted namespace:\n\(check.output)")
            #expect(check.output.contains("DRIFT     \(namespace).state: config cleanup.policy is delete"), "\(check.output)")
            #expect(check.output.contains("DRIFT     \(namespace).events: partitions is 2, declared 12"), "\(check.output)")
        }

        @Test func batonCheckNamesMissingTopicsAndPassesAnAppliedNamespace() async throws {
            let namespace = TestKafka.uniqueName("check")
            let empty = try BatonProcess(["check"], namespace: namespace)
            #expect(try await Self.exitStatus(empty, "baton check", within: .seconds(30)) != 0, "\(empty.output)")
            #expect(empty.output.contains("MISSING   \(namespace).events"), "\(empty.output)")

            let apply = try BatonProcess(["topics", "apply", "--replication-factor", "1"], namespace: namespace)
            #expect(try await Self.exitStatus(apply, "baton topics apply", within: .seconds(30)) == 0, "\(apply.output)")
            let applied = try BatonProcess(["check"], namespace: namespace)
            #expect(try await Self.exitStatus(applied, "baton check", within: .seconds(30)) == 0, "\(applied.output)")
            #expect(applied.output.contains("ok        \(namespace).state"), "\(applied.output)")
        }

        /// The race an operator can win: the cluster is wiped and `topics apply` runs again before any check saw
        /// the topics missing. Same names, same counts, same configs; only their ids differ, and that is the loss.
        @Test func topicsAppliedAgainOnAWipedClusterAreALossByTheirNewIds() async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            let names = TopicNames(namespace: TestKafka.uniqueName("ids"))
            let apply = { (kafka: KafkaClientConfiguration) in
                _ = try await TopicApplier(
                    admin: KafkaAdmin(configuration: kafka, logger: TestKafka.logger), namespace: names.namespace, replicationFactor: 1, logger: TestKafka.logger
                ).apply(try Self.specs(partitions: 3))
            }
            try await apply(broker.client)
            let topics = try EngineTopicGuard(client: broker.client, names: names, role: .worker, interval: .milliseconds(200), logger: TestKafka.logger)
            try await topics.checkAtStart()

            broker.stop()
            let fresh = try await PrivateBroker(port: broker.port)
            defer { fresh.stop() }
            try await apply(fresh.client)
            let watching = try EngineTopicGuard(client: fresh.client, names: names, role: .worker, interval: .milliseconds(200), logger: TestKafka.logger)
            try await watching.checkAtStart()  // a guard started now sees sound topics...
            #expect(watching.isSound)
            // ...and the one that saw them before does not: their ids changed.
            let error = await #expect(throws: EngineTopicsError.self) {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await topics.watch() }
                    group.addTask {
                        try await Task.sleep(for: .seconds(30))
                        throw DeadlineExceeded(what: "the guard to see the recreated topics")
                    }
                    try await group.next()
                    group.cancelAll()
                }
            }
            #expect(error?.problems.contains { $0.hasPrefix("\(names.events) was deleted and created again (topic id ") } == true, "\(error?.problems ?? [])")
            #expect(!topics.isSound)
        }

        /// The broker is replaced by a fresh, empty one on the same port (a wiped cluster) under a coordinator,
        /// a Swift worker and the server: each says so at critical level and exits with status 78, no client
        /// creates a topic, and once `baton topics apply` ran (and the definitions are registered again), the
        /// processes started again run new orders and run none of the old ones again.
        @Test func aWipedClusterStopsEveryProcessWithItsStatusCreatesNoTopicAndRunsNothingAgain() async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            try await withEngine(partitions: 3, kafka: broker.client) { engine in
                let namespace = engine.names.namespace
                _ = try await engine.register(OutageTests.seed)
                let authPath = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID()).yaml").path
                try AuthFile(tokens: [AuthFile.newToken(subject: "ops", roles: ["admin"]).entry]).save(authPath)
                defer { try? FileManager.default.removeItem(atPath: authPath) }  // a temporary file: nothing to do if it is gone
                let pools = ["--pool", "service_call", "--pool", "notification"]
                var processes: [(String, BatonProcess)] = [
                    ("coordinator", try engine.process(["coordinator"])),
                    ("worker", try engine.process(["example-workers"] + pools)),
                    ("server", try engine.process(["serve", "--port", "0", "--auth", authPath])),
                ]
                defer { for (_, p) in processes { p.kill9() } }
                for i in 0..<5 {
                    let id = try await engine.start("order_fulfillment", id: "before-\(i)")
                    try await engine.wait(id, for: [.completed], timeout: .seconds(120))
                }
                _ = try await processes[2].1.waitForLine("baton serve: (http://\\S+)")
                await engine.shutdown()  // the test's own clients leave the old broker first

                broker.stop()
                let fresh = try await PrivateBroker(port: broker.port)
                defer { fresh.stop() }
                for (name, process) in processes {
                    let status = try await Self.exitStatus(process, "the \(name) after the wipe")
                    let log = process.output
                    #expect(status == EngineTopicGuard.exitStatus, "the \(name) exited with \(status):\n\(log.suffix(3000))")
                    #expect(log.contains("critical") && log.contains("vanished or changed while running"), "the \(name) did not say so:\n\(log.suffix(3000))")
                    #expect(log.contains("\(namespace).events"), "the \(name) did not name the events topic:\n\(log.suffix(3000))")
                }
                let created = try await KafkaAdmin(configuration: fresh.client, logger: TestKafka.logger).metadata().topics.keys.filter { $0.hasPrefix(namespace + ".") }
                #expect(created.isEmpty, "clients created \(created.sorted())")

                // Started again before the topics are back, a process refuses at once, naming what is missing.
                let early = try engine.process(["coordinator"])
                #expect(try await Self.exitStatus(early, "a coordinator started before topics apply") == EngineTopicGuard.exitStatus)
                #expect(early.output.contains("\(namespace).events is missing"), "\(early.output.suffix(2000))")

                let apply = try engine.process(["topics", "apply", "--replication-factor", "1"])
                #expect(try await Self.exitStatus(apply, "baton topics apply") == 0, "\(apply.output)")
                try await withEngine(partitions: 12, kafka: fresh.client, namespace: namespace) { after in
                    _ = try await after.register(OutageTests.seed)
                    processes = [
                        ("coordinator", try after.process(["coordinator"])),
                        ("worker", try after.process(["example-workers"] + pools)),
                        ("server", try after.process(["serve", "--port", "0", "--auth", authPath])),
                    ]
                    let id = try await after.start("order_fulfillment", id: "after-0")
                    try await after.wait(id, for: [.completed], timeout: .seconds(120))
                    _ = try await processes[2].1.waitForLine("baton serve: (http://\\S+)")
                    let events = try await after.records(after.names.events)
                    let rerun = events.compactMap(\.keyString).filter { $0.hasPrefix("before-") }
                    #expect(rerun.isEmpty, "old orders ran again: \(Set(rerun).sorted())")
                    for (name, process) in processes { #expect(process.isRunning, "the \(name) stopped:\n\(process.output.suffix(2000))") }
                }
            }
        }
    }
}

@Suite("Engine topics: a loss is confirmed by a second check")
struct LossConfirmationTests {
    @Test func aProblemSeenOnTwoChecksInARowIsALossAndOneSeenOnceIsNot() {
        var confirmation = LossConfirmation()
        #expect(confirmation.observe([]) == nil)
        #expect(confirmation.observe(["ns.events is missing"]) == nil, "one check is not enough")
        #expect(confirmation.observe([]) == nil, "a sound check clears it")
        #expect(confirmation.observe(["ns.events is missing"]) == nil)
        #expect(confirmation.observe(["ns.events is missing", "ns.state is missing"]) == ["ns.events is missing", "ns.state is missing"])
    }

    @Test func differentProblemsOnTwoChecksAreNotALossYet() {
        var confirmation = LossConfirmation()
        #expect(confirmation.observe(["ns.events is missing"]) == nil)
        #expect(confirmation.observe(["ns.state is missing"]) == nil)
        #expect(confirmation.observe(["ns.state is missing"]) == ["ns.state is missing"])
    }
}

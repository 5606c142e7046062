import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Synchronization
import Testing

@Suite("Runtime: coordinator and workers on the real broker", .serialized, .timeLimit(.minutes(3)))
struct RuntimeTests {
    static let seed = #"{"workflow_id":"order_fulfillment","steps":[{"id":"validate","type":"service_call","depends_on":[]},{"id":"reserve","type":"service_call","depends_on":["validate"]},{"id":"charge","type":"service_call","depends_on":["reserve"]},{"id":"ship","type":"service_call","depends_on":["charge"]},{"id":"notify","type":"notification","depends_on":["ship"]}]}"#

    @Test func orderFulfillmentCompletes() async throws {
        try await withEngine { engine in
            _ = try await engine.register(Self.seed)
            engine.startCoordinator()
            let seen = Recorder<String>()
            engine.startWorker("service_call") { ctx in
                seen.add("\(ctx.instanceID)/\(ctx.step)")
                return ["done": .string(ctx.step), "order": ctx.input["order_id"] ?? .null]
            }
            engine.startWorker("notification") { ctx in
                seen.add("\(ctx.instanceID)/\(ctx.step)")
                return ["sent": true]
            }
            var ids: [String] = []
            for i in 0..<20 { ids.append(try await engine.start("order_fulfillment", input: ["order_id": .string("o-\(i)")])) }
            for id in ids {
                let state = try await engine.wait(id, for: [.completed, .failed])
                #expect(state.status == .completed)
                #expect(state.steps.map(\.status) == Array(repeating: .completed, count: 5))
                #expect(state.steps[3].output?["order"] != nil)
            }
            // Each step of each instance ran once, in order.
            for id in ids {
                #expect(seen.all.filter { $0.hasPrefix(id) } == ["validate", "reserve", "charge", "ship", "notify"].map { "\(id)/\($0)" })
            }
        }
    }

    @Test func independentBranchesRunInParallel() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: fan
                steps:
                  - { id: A, type: work, input: { ms: 400 } }
                  - { id: B, type: work, input: { ms: 600 } }
                  - { id: C, type: work, input: { ms: 200 } }
                  - { id: D, type: work, depends_on: [A, B, C], input: { ms: 0 } }
                """)
            engine.startCoordinator()
            let spans = Recorder<(String, Int64, Int64)>()
            engine.startWorker("work") { ctx in
                let start = nowMillis()
                try await Task.sleep(for: .milliseconds(ctx.input["ms"]?.intValue ?? 0))  // the work itself takes this long
                spans.add((ctx.step, start, nowMillis()))
                return [:]
            }
            let id = try await engine.start("fan")
            #expect(try await engine.wait(id, for: [.completed, .failed]).status == .completed)
            let byStep = Dictionary(uniqueKeysWithValues: spans.all.map { ($0.0, ($0.1, $0.2)) })
            let (a, b, c, d) = (byStep["A"]!, byStep["B"]!, byStep["C"]!, byStep["D"]!)
            // A, B and C overlapped: each started before the others ended.
            #expect(max(a.0, b.0, c.0) < min(a.1, b.1, c.1))
            // D started after the last of them ended.
            #expect(d.0 >= max(a.1, b.1, c.1))
        }
    }

    @Test func aStepThatKeepsFailingIsRetriedWithGrowingDelaysThenCompensatedInReverseAndAlerted() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: saga
                on_failure: { compensate: true, alert: true, then: suspend }
                steps:
                  - { id: reserve, type: svc, compensation: { type: undo } }
                  - { id: hold, type: svc, depends_on: [reserve], compensation: { type: undo } }
                  - id: charge
                    type: svc
                    depends_on: [hold]
                    retry: { max_attempts: 3, initial_backoff: 300ms, multiplier: 3, jitter: 0 }
                """)
            engine.startCoordinator()
            let attempts = Recorder<Int64>()
            let undone = Recorder<String>()
            engine.startWorker("svc") { ctx in
                if ctx.step == "charge" {
                    attempts.add(nowMillis())
                    throw StepFailure("gateway down")
                }
                return ["id": .string("\(ctx.step)-1")]
            }
            engine.startWorker("undo") { ctx in
                undone.add(ctx.step)
                #expect(ctx.isCompensation)
                return [:]
            }
            let id = try await engine.start("saga")
            let state = try await engine.wait(id, for: [.suspended, .failed, .completed])
            #expect(state.status == .suspended)
            #expect(state.reason == "'charge' failed after 3 attempts: gateway down")
            let times = attempts.all
            #expect(times.count == 3)
            if times.count == 3 {
                let (first, second) = (times[1] - times[0], times[2] - times[1])
                // Timers never fire early: the delays are at least the policy's 300 ms, then 300 ms x 3.
                #expect(first >= 300 && second >= 900, "delays \(first) ms then \(second) ms")
            }
            #expect(undone.all == ["hold", "reserve"])
            let alerts = try await engine.records(engine.names.alerts).compactMap { $0.value.flatMap { try? JSONDecoder().decode(AlertRecord.self, from: $0) } }
            #expect(alerts.count == 1)
            #expect(alerts.first?.alert.instanceID == id)
            // In the order the compensations ran.
            #expect(alerts.first?.alert.message.contains("compensated: hold, reserve") == true, "\(alerts)")
        }
    }

    /// `for_each` over Kafka: one command per item (at most two at once), outputs collected in order; an item
    /// that fails for good has the items that completed undone one by one; a step whose `when` is false is skipped.
    @Test func forEachItemsRunInParallelAndAreCompensatedOneByOne() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: batch
                steps:
                  - { id: split, type: svc }
                  - id: each
                    type: svc
                    depends_on: [split]
                    for_each: { items: $.steps.split.output.skus, max_concurrency: 2 }
                    input: { sku: $.item, position: $.index }
                    retry: { max_attempts: 1 }
                    compensation: { type: undo, input: { sku: $.item } }
                  - { id: gift, type: svc, depends_on: [split], when: $.input.vip == true }
                  - { id: total, type: svc, depends_on: [each, gift], input: { lines: $.steps.each.output } }
                """)
            engine.startCoordinator()
            let running = Mutex((now: 0, most: 0))
            let totals = Recorder<JSON>()
            engine.startWorker("svc", concurrency: 16) { ctx in
                switch ctx.step {
                case "split":
                    return ["skus": .array(ctx.instanceID.hasPrefix("bad") ? ["a", "b", "broken", "d"] : ["a", "b", "c", "d", "e"])]
                case "each":
                    running.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
                    defer { running.withLock { $0.now -= 1 } }
                    let sku = ctx.input["sku"]?.stringValue ?? ""
                    if sku == "broken" { throw StepFailure("no stock for \(sku)", retryable: false) }
                    try await Task.sleep(for: .milliseconds(100))  // the service's own work, so that items overlap
                    return ["line": .string("\(sku)@\(Int(ctx.input["position"]?.numberValue ?? -1))")]
                case "total":
                    totals.add(ctx.input)
                    return [:]
                default:
                    Issue.record("\(ctx.step) should have been skipped")
                    return [:]
                }
            }
            let undone = Recorder<String>()
            engine.startWorker("undo") { ctx in
                undone.add(ctx.input["sku"]?.stringValue ?? "?")
                return [:]
            }

            let good = try await engine.start("batch", input: ["vip": false], id: "good-1")
            let state = try await engine.wait(good, for: [.completed, .failed])
            #expect(state.status == .completed)
            #expect(state.steps[2].status == .skipped)
            #expect(totals.all == [["lines": [["line": "a@0"], ["line": "b@1"], ["line": "c@2"], ["line": "d@3"], ["line": "e@4"]]]])
            #expect(running.withLock { $0.most } == 2, "max_concurrency: 2")

            let bad = try await engine.start("batch", input: ["vip": false], id: "bad-1")
            let failed = try await engine.wait(bad, for: [.completed, .failed, .suspended])
            #expect(failed.status == .failed)
            try await waitUntil("the completed items to be undone") { undone.all.count >= 2 }
            // Items a and b completed before 'broken' failed (two at a time, in order); d never ran or was undone too.
            #expect(Set(undone.all).isSuperset(of: ["a", "b"]))
            #expect(!undone.all.contains("broken"))
            #expect(Set(undone.all).count == undone.all.count, "an item undone twice: \(undone.all)")
        }
    }

    @Test func aHumanTaskWaitsForADecision() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: loan
                steps:
                  - { id: score, type: svc }
                  - { id: approve, type: human_task, depends_on: [score], assignee: role:credit_manager, input: { score: $.steps.score.output.score } }
                  - { id: disburse, type: svc, depends_on: [approve] }
                """)
            engine.startCoordinator()
            engine.startWorker("svc") { ctx in ctx.step == "score" ? ["score": 710] : ["paid": true] }
            let id = try await engine.start("loan")
            #expect(try await engine.wait(id, for: [.waiting]).status == .waiting)
            let task = try #require(try await engine.client.tasks().first { $0.task?.instanceID == id && $0.status == .open })
            #expect(task.task?.assignee == "role:credit_manager")
            #expect(task.task?.input == ["score": 710])
            let notifications = try await engine.records(engine.names.notifications)
            #expect(notifications.contains { $0.keyString == id })
            // Decided through the client library, which waits until a coordinator has closed the task. (People
            // decide through `baton serve`, which checks their role: ServerTests.)
            let approved = try await engine.client.decideAndWait(taskID: task.taskID, approve: true, as: .person("alice", "credit_manager"), comment: "ok")
            #expect(approved.status == .approved)
            let closed = try await engine.client.tasks().first { $0.taskID == task.taskID }
            #expect(closed?.status == .approved)
            #expect(closed?.decidedBy == "alice")
            let state = try await engine.wait(id, for: [.completed, .failed])
            #expect(state.status == .completed)
            #expect(state.steps[1].output?["by"] == "alice")
        }
    }

    /// A human task nobody decides in time escalates to another role (a new task; the first one is closed as
    /// escalated); that one, undecided too, is rejected, which runs the failure path.
    @Test func anUndecidedTaskEscalatesThenTimesOutAsDefined() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: loan
                steps:
                  - id: approve
                    type: human_task
                    assignee: role:credit_manager
                    timeout: 1s
                    on_timeout: { action: escalate, escalate_to: role:head_of_credit, then: reject }
                  - { id: disburse, type: svc, depends_on: [approve] }
                """)
            engine.startCoordinator()
            engine.startWorker("svc") { _ in
                Issue.record("nothing may be disbursed")
                return [:]
            }
            let id = try await engine.start("loan")
            var byRole: [String: TaskRecord] = [:]
            try await waitUntil("the task to escalate") {
                byRole = [:]
                for record in try await engine.client.tasks() where record.task?.instanceID == id || record.taskID.hasPrefix(id) {
                    if let assignee = record.task?.assignee { byRole[assignee] = record }
                }
                return byRole["role:head_of_credit"] != nil
            }
            let first = try #require(byRole["role:credit_manager"])
            try await waitUntil("the first task to be closed as escalated") {
                try await engine.client.tasks().first { $0.taskID == first.taskID }?.status == .escalated
            }
            let state = try await engine.wait(id, for: [.failed, .suspended, .completed])
            #expect(state.status == .failed)
            #expect(state.reason?.contains("approve") == true, "\(state.reason ?? "")")
            let second = try #require(byRole["role:head_of_credit"])
            try await waitUntil("the escalated task to be closed as timed out") {
                try await engine.client.tasks().first { $0.taskID == second.taskID }?.status == .timedOut
            }
            // A decision that comes too late changes nothing.
            let late = await #expect(throws: ClientError.self) { try await engine.client.decide(taskID: second.taskID, approve: true, as: .person("bob", "credit_manager"), comment: nil) }
            #expect(late?.description.contains("not open") == true)
        }
    }

    @Test func poisonInputGoesToTheDeadLetterTopicAndNoConsumerStops() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register(Self.seed)
            engine.startCoordinator()
            engine.startWorker("service_call") { _ in [:] }
            engine.startWorker("notification") { _ in [:] }
            var producerConfiguration = KafkaProducerConfiguration(client: TestKafka.client)
            producerConfiguration.additional["message.max.bytes"] = "3000000"
            let producer = try KafkaProducer(configuration: producerConfiguration, logger: TestKafka.logger)
            let events = engine.names.events
            let huge = Data(("{\"v\":1,\"kind\":\"start\",\"instance_id\":\"x\",\"workflow_id\":\"order_fulfillment\",\"input\":\"" + String(repeating: "a", count: 1_100_000) + "\"}").utf8)
            let poison: [(String, Data?)] = [
                ("not json", Data("hello".utf8)),
                ("wrong schema", Data(#"{"v":1,"kind":"step.completed","instance_id":"i"}"#.utf8)),
                ("unknown kind", Data(#"{"v":1,"kind":"teleport","instance_id":"i"}"#.utf8)),
                ("future version", Data(#"{"v":7,"kind":"start"}"#.utf8)),
                ("unknown instance", Data(#"{"v":1,"kind":"step.completed","instance_id":"ghost","step":"validate","attempt":1,"output":{}}"#.utf8)),
                ("unknown workflow", Data(#"{"v":1,"kind":"start","instance_id":"nobody","workflow_id":"nope","input":{}}"#.utf8)),
                ("no value", nil),
                ("huge", huge),
            ]
            for (name, value) in poison {
                try await producer.send(ProducerRecord(topic: events, partition: 0, key: Data(name.utf8), value: value))
            }
            try await producer.send(ProducerRecord(topic: engine.names.commands("service_call"), key: "bad", value: Data("{\"v\":1,\"kind\":\"step.command\"}".utf8)))
            await producer.close()

            // A definition record that is not one, on the definitions topic: the coordinator goes on without it.
            let definitions = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
            try await definitions.send(ProducerRecord(topic: engine.names.definitions, key: "broken@1", value: Data("{not a definition".utf8)))
            await definitions.close()

            // The engine goes on: a real instance still completes.
            let id = try await engine.start("order_fulfillment", input: ["order_id": "o"])
            #expect(try await engine.wait(id, for: [.completed, .failed]).status == .completed)
            // A result for a step the instance does not have.
            let stray = try KafkaProducer(configuration: .init(client: TestKafka.client), logger: TestKafka.logger)
            let unknownStep = ResultMessage(kind: .stepCompleted, instanceID: id, step: "teleport", item: nil, attempt: 1, output: [:], idempotencyKey: nil)
            try await stray.send(ProducerRecord(topic: events, partition: 0, key: Data("unknown step".utf8), value: Wire.encode(unknownStep)))
            await stray.close()

            var letters: [KafkaMessage] = []
            try await waitUntil("every poison record in the dead-letter topic") {
                letters = try await engine.records(engine.names.deadletter)
                return letters.count >= poison.count + 2
            }
            func reason(_ key: String) -> String? {
                letters.first { $0.keyString == key }?.header(WireHeaders.deadLetterReason).map { String(decoding: $0, as: UTF8.self) }
            }
            #expect(reason("not json")?.hasPrefix("not a JSON object") == true)
            #expect(reason("wrong schema")?.contains("field 'step' is missing") == true)
            #expect(reason("unknown kind")?.hasPrefix("unknown kind 'teleport'") == true)
            #expect(reason("future version") == "protocol version 7 is not supported (this build reads 1)")
            #expect(reason("unknown instance")?.hasPrefix("unknown instance 'ghost'") == true)
            #expect(reason("unknown workflow") == "unknown workflow 'nope': register it first")
            #expect(reason("no value") == "a record without a value")
            #expect(reason("huge")?.contains("more than the limit") == true)
            #expect(reason("bad")?.contains("field 'instance_id' is missing") == true)
            #expect(reason("unknown step") == "instance '\(id)': no step 'teleport' in order_fulfillment v1")
            let source = letters.first { $0.keyString == "not json" }?.header(WireHeaders.deadLetterTopic)
            #expect(source.map { String(decoding: $0, as: UTF8.self) } == events)
        }
    }
}

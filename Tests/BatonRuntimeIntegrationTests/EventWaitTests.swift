import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonTriggers
import BatonWire
import BatonWorker
import Foundation
import Synchronization
import Testing

/// Event waits and signals on the real broker: records from a business topic read by `TriggerService`, their
/// mailboxes kept by the coordinators, and signals sent by the client and the command line.
@Suite("Runtime: waiting for events and signals", .serialized, .timeLimit(.minutes(4)))
struct EventWaitTests {
    /// A trigger service in this process, on the engine's namespace, until the test cancels it.
    static func startTriggers(_ engine: Engine) -> Task<Void, any Error> {
        var configuration = TriggerConfiguration(client: engine.kafka, names: engine.names)
        configuration.sessionTimeout = .seconds(6)
        configuration.maxPollInterval = .seconds(6)
        configuration.topicRefresh = .milliseconds(200)
        let service = TriggerService(configuration: configuration, logger: TestKafka.logger)
        return Task { try await service.run() }
    }

    static func produce(_ topic: String, key: String, _ value: JSON) async throws {
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: TestKafka.client), logger: TestKafka.logger)
        _ = try await producer.send(ProducerRecord(topic: topic, key: Data(key.utf8), value: value.encoded()))
        await producer.close()
    }

    /// The partition a producer's default partitioner puts a key on.
    static func partition(of key: String, topic: String) async throws -> Int {
        let count = try await TestKafka.admin().metadata().topics[topic]?.partitionCount ?? 1
        return Int(KafkaPartitioner.partition(forKey: key, partitionCount: count))
    }

    static func waitYAML(_ topic: String, timeout: String = "2m", ttl: String = "1h") -> String {
        """
        workflow_id: pay
        on_failure: { compensate: true, alert: true, then: fail }
        steps:
          - { id: charge, type: svc, compensation: { type: refund } }
          - id: settled
            type: wait_for_event
            depends_on: [charge]
            timeout: \(timeout)
            event: { topic: \(topic), correlate: $.event.value.order_id, equals: $.input.order_id, ttl: \(ttl) }
          - { id: ship, type: svc, depends_on: [settled], input: { amount: $.steps.settled.output.amount } }
        """
    }

    @Test func aRecordThatArrivesBeforeItsInstanceWaitsIsDeliveredAndBecomesTheOutput() async throws {
        try await withEngine { engine in
            let topic = TestKafka.uniqueName("payments")
            try await TestKafka.createTopic(topic, partitions: 2)
            _ = try await engine.register(Self.waitYAML(topic))
            engine.startCoordinator()
            let triggers = Self.startTriggers(engine)
            defer { triggers.cancel() }  // also when the test fails (it is awaited at the end when it passes)
            let charged = Gate()
            defer { charged.open() }  // also when the test fails: a handler held at it would keep the worker from stopping
            let shipped = Recorder<JSON>()
            engine.startWorker("svc") { ctx in
                if ctx.step == "charge" { await charged.wait() }
                if ctx.step == "ship" { shipped.add(ctx.input) }
                return [:]
            }
            engine.startWorker("refund") { _ in [:] }
            let id = try await engine.start("pay", input: ["order_id": "o-1"])
            // The settlement comes while the card is still being charged: before the instance waits for it.
            try await Self.produce(topic, key: "o-1", ["order_id": "o-1", "amount": 42])
            try await waitUntil("the record to be kept in its mailbox", timeout: .seconds(60)) {
                try await engine.records(engine.names.mailboxes).contains { $0.value != nil && $0.keyString?.contains("/o-1") == true }
            }
            charged.open()
            let done = try await engine.wait(id, for: [.completed, .failed, .suspended])
            #expect(done.status == .completed, "\(done.reason ?? "")")
            #expect(shipped.all == [["amount": 42]])
            // The mailbox keeps nothing for anyone now, only the record's id (so that reading it again changes nothing).
            let last = try #require(try await engine.records(engine.names.mailboxes).last { $0.keyString?.contains("/o-1") == true }?.value)
            let mailbox = try Wire.decode(MailboxSnapshot.self, from: last).mailbox
            #expect(mailbox.messages.isEmpty && mailbox.subscriptions.isEmpty)
            #expect(mailbox.consumed.keys.sorted() == ["\(topic)/\(try await Self.partition(of: "o-1", topic: topic))/0"])
            triggers.cancel()
            _ = await triggers.result
        }
    }

    @Test func aRecordThatNeverComesTimesTheStepOutAndTheCompensationsRun() async throws {
        try await withEngine { engine in
            let topic = TestKafka.uniqueName("payments")
            try await TestKafka.createTopic(topic, partitions: 1)
            _ = try await engine.register(Self.waitYAML(topic, timeout: "2s"))
            engine.startCoordinator()
            let triggers = Self.startTriggers(engine)
            defer { triggers.cancel() }  // also when the test fails (it is awaited at the end when it passes)
            let refunds = Recorder<String>()
            engine.startWorker("svc") { _ in [:] }
            engine.startWorker("refund") { ctx in
                refunds.add(ctx.instanceID)
                return [:]
            }
            let id = try await engine.start("pay", input: ["order_id": "o-2"])
            // A settlement for another order changes nothing for this one.
            try await Self.produce(topic, key: "o-3", ["order_id": "o-3", "amount": 1])
            let done = try await engine.wait(id, for: [.completed, .failed, .suspended])
            #expect(done.status == .failed)
            #expect(done.reason?.contains("no record on \(topic) matched within 2s") == true, "\(done.reason ?? "")")
            #expect(refunds.all == [id])
            let alerts = try await engine.records(engine.names.alerts).compactMap { $0.value.flatMap { String(data: $0, encoding: .utf8) } }
            #expect(alerts.contains { $0.contains(id) && $0.contains("compensated: charge") }, "\(alerts)")
            triggers.cancel()
            _ = await triggers.result
        }
    }

    @Test func aSignalChangesTheBranchAWhenTakesAndUnknownNamesAreRefused() async throws {
        try await withEngine { engine in
            _ = try await engine.register("""
                workflow_id: ship
                signals: [expedite]
                steps:
                  - { id: pack, type: svc }
                  - { id: express, type: svc, depends_on: [pack], when: $.signals.expedite, input: { why: $.signals.expedite.why } }
                  - { id: standard, type: svc, depends_on: [pack], when: "!$.signals.expedite" }
                  - { id: approve, type: signal, signal: go, timeout: 2m, depends_on: [express, standard] }
                """)
            engine.startCoordinator()
            let packed = Gate()
            defer { packed.open() }  // also when the test fails: a handler held at it would keep the worker from stopping
            let ran = Recorder<String>()
            let reasons = Recorder<JSON>()
            engine.startWorker("svc") { ctx in
                if ctx.step == "pack" { await packed.wait() }
                ran.add("\(ctx.instanceID)/\(ctx.step)")
                if ctx.step == "express" { reasons.add(ctx.input) }
                return [:]
            }
            let fast = try await engine.start("ship", input: [:], id: "fast-1")
            let slow = try await engine.start("ship", input: [:], id: "slow-1")
            _ = try await engine.wait(fast, for: [.running])
            // Through the client library, and through the command line.
            let signalled = try await engine.client.signalAndWait(instanceID: fast, name: "expedite", data: ["why": "vip"], as: .person("ann", "operator"))
            #expect(signalled.signals == ["expedite": ["why": "vip"]])
            let refused = try await engine.baton(["signal", slow, "expedit"])
            #expect(refused.status != 0)
            #expect(refused.output.contains("has no signal 'expedit' (did you mean 'expedite'?)"), "\(refused.output)")
            packed.open()
            try await waitUntil("both instances to wait for their approval signal", timeout: .seconds(60)) {
                ran.all.count == 4
            }
            #expect(Set(ran.all) == ["fast-1/pack", "fast-1/express", "slow-1/pack", "slow-1/standard"])
            #expect(reasons.all == [["why": "vip"]])
            for id in [fast, slow] {
                let sent = try await engine.baton(["signal", id, "go", "--data", "{\"by\": \"bo\"}"])
                #expect(sent.status == 0, "\(sent.output)")
                let done = try await engine.wait(id, for: [.completed, .failed])
                #expect(done.status == .completed)
                #expect(done.steps[3].output == ["by": "bo"])
            }
        }
    }

    /// The example as a user runs it: an order written to `shop.orders` starts the saga, which waits for the
    /// payment provider's settlement on `payments.settled` and ships.
    @Test func theEventDrivenOrderExampleRunsFromItsTopics() async throws {
        try await withEngine { engine in
            // The example names its business topics as they are: give this test its own, with the same shape.
            let orders = TestKafka.uniqueName("shop.orders")
            let settled = TestKafka.uniqueName("payments.settled")
            let document = try String(contentsOf: repositoryRoot.appendingPathComponent("examples/order-fulfillment-events.yaml"), encoding: .utf8)
                .replacingOccurrences(of: "topic: shop.orders", with: "topic: \(orders)")
                .replacingOccurrences(of: "topic: payments.settled", with: "topic: \(settled)")
            try await TestKafka.createTopic(orders, partitions: 3)
            try await TestKafka.createTopic(settled, partitions: 3)
            _ = try await engine.register(document)
            engine.startCoordinator()
            let triggers = Self.startTriggers(engine)
            defer { triggers.cancel() }  // also when the test fails (it is awaited at the end when it passes)
            let pools = ["orders.validate", "inventory.reserve", "inventory.release", "payments.charge", "payments.refund", "shipping.create", "shipping.cancel", "notifications.email"]
            let workers = try engine.process(["example-workers"] + pools.flatMap { ["--pool", $0] })
            defer { workers.terminate() }
            let order: JSON = [
                "order_id": "o-77", "status": "placed", "items": [["sku": "SKU-1", "qty": 1]], "amount": 42, "currency": "EUR",
                "address": "1 Main St", "email": "a@b.example",
            ]
            try await Self.produce(orders, key: "o-77", order)
            // A record the trigger's condition does not take starts nothing.
            try await Self.produce(orders, key: "o-78", ["order_id": "o-78", "status": "draft"])
            let waiting = try await engine.wait("o-77", for: [.waiting], timeout: .seconds(90))
            #expect(waiting.steps[3].units.first?.status == .running)  // await_settlement
            try await Self.produce(settled, key: "o-77", ["order_id": "o-77", "payment_id": "pay-1", "settled_amount": 42])
            let done = try await engine.wait("o-77", for: [.completed, .suspended, .failed], timeout: .seconds(90))
            #expect(done.status == .completed, "\(done.reason ?? "")")
            #expect(done.startRequest?.hasPrefix("trigger/\(orders)/") == true)
            let states = try await engine.records(engine.names.state)
            #expect(!states.contains { $0.keyString == "o-78" })
            triggers.cancel()
            _ = await triggers.result
        }
    }
}

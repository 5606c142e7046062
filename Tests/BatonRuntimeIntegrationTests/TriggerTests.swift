import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonTestSupport
import BatonTriggers
import BatonWire
import Foundation
import MetricsTestKit
import Synchronization
import Testing

/// What a business record becomes, without a broker: the plan built from definitions, and the records it makes.
@Suite("Triggers: what a business record becomes")
struct TriggerPlanTests {
    static func load(_ yaml: String) throws -> Workflow { try DefinitionLoader.load(Data(yaml.utf8)) }

    static func record(_ topic: String, partition: Int32 = 0, offset: Int64, key: String? = nil, value: String?, headers: [KafkaHeader] = []) -> KafkaMessage {
        KafkaMessage(topic: topic, partition: partition, offset: offset, key: key.map { Data($0.utf8) }, value: value.map { Data($0.utf8) }, headers: headers, timestamp: 1_000)
    }

    static let names = TopicNames(namespace: "shop")

    @Test func theLatestVersionsTriggersAndEveryVersionsWaitsAreReadButNotTheEnginesTopics() throws {
        let v1 = try Self.load("""
            workflow_id: orders
            version: 1
            triggers: [{ topic: old.orders }]
            steps:
              - { id: pay, type: wait_for_event, timeout: 1h, event: { topic: payments, correlate: $.event.value.order_id, equals: $.input.order_id, ttl: 10m } }
            """)
        let v2 = try Self.load("""
            workflow_id: orders
            version: 2
            triggers: [{ topic: orders, instance_id: $.event.value.order_id }, { topic: shop.events }]
            steps:
              - { id: pay, type: wait_for_event, timeout: 2h, event: { topic: payments, correlate: $.event.value.order_id, equals: $.input.order_id } }
              - { id: ship, type: wait_for_event, depends_on: [pay], timeout: 45m, event: { topic: payments, equals: $.input.order_id } }
            """)
        let plan = TriggerPlan(workflows: [v2, v1], latest: ["orders": 2], namespace: "shop", eventsPartitions: 3)
        // v1's trigger is gone with v2; its wait stays (instances of v1 may still wait); the engine's topic is refused.
        #expect(plan.topicNames == ["orders", "payments"])
        #expect(plan.topics["orders"]?.triggers.map(\.version) == [2])
        #expect(plan.refused.keys.sorted() == ["shop.events"])
        #expect(plan.refused["shop.events"]?.contains("one of the engine's topics (namespace 'shop')") == true)
        #expect(plan.refused["shop.events"]?.contains("triggers[1] of orders v2") == true)
        // One mailbox record per (topic, correlation path), kept for the longest time any step asks for.
        let waits = try #require(plan.topics["payments"]?.waits)
        #expect(waits.map(\.correlate) == ["$.event.value.order_id", "$.event.key"])
        #expect(waits[0].ttl == .hours(2))
        #expect(waits[0].steps == ["orders v1 step 'pay'", "orders v2 step 'pay'"])
        #expect(waits[1].ttl == .minutes(45))
    }

    @Test func aRecordStartsTheSameInstanceWhenReadAgainAndItsMailboxRecordKeepsItsID() throws {
        let workflow = try Self.load("""
            workflow_id: orders
            triggers: [{ topic: orders, instance_id: $.event.value.id, when: '$.event.value.status == "placed"', input: { order: $.event.value, from: $.event.topic } }]
            steps:
              - { id: pay, type: wait_for_event, timeout: 30m, event: { topic: orders, correlate: $.event.key, equals: $.input.order.id } }
            """)
        let plan = TriggerPlan(workflows: [workflow], latest: ["orders": 1], namespace: "shop", eventsPartitions: 12)
        let m = Self.record("orders", partition: 2, offset: 17, key: "k-17", value: #"{"id": 17, "status": "placed"}"#, headers: [KafkaHeader(key: "traceparent", string: "00-abc")])
        let first = plan.process(m, names: Self.names, now: 5_000)
        let again = plan.process(m, names: Self.names, now: 9_000)
        #expect(first.labels == ["started", "published"])
        #expect(first.deadLetter == nil)
        func start(_ o: TriggerPlan.Outcome) throws -> StartMessage { try Wire.decode(StartMessage.self, from: try #require(o.records.first?.value)) }
        let s1 = try start(first), s2 = try start(again)
        // A number as its JSON text; the input rendered from the record; the request id names the record.
        #expect(s1.instanceID == "17")
        #expect(s1.version == 1)
        #expect(s1.input == ["order": ["id": 17, "status": "placed"], "from": "orders"])
        #expect(s1.requestID == "trigger/orders/2/17")
        #expect(s1.instanceID == s2.instanceID && s1.input == s2.input && s1.requestID == s2.requestID && s1.version == s2.version)
        #expect(first.records[0].partition == KafkaPartitioner.partition(forKey: "17", partitionCount: 12))
        #expect(first.records[0].headers.contains { $0.key == "traceparent" })
        let mailbox = try Wire.decode(MailboxRecordMessage.self, from: try #require(first.records[1].value))
        #expect(mailbox.mailbox == Mailbox.key(topic: "orders", correlate: "$.event.key", value: "k-17"))
        #expect(mailbox.event.id == "orders/2/17")
        #expect(mailbox.event.expiresAt - mailbox.event.at == Millis.minutes(30).value)
        #expect(first.records[1].partition == KafkaPartitioner.partition(forKey: mailbox.mailbox, partitionCount: 12))

        // The condition does not hold: no start, but the wait still gets the record.
        let cancelled = plan.process(Self.record("orders", offset: 18, key: "k-18", value: #"{"id": 18, "status": "cancelled"}"#), names: Self.names, now: 5_000)
        #expect(cancelled.labels == ["published"])
        // A tombstone is consumed without a word.
        let tombstone = plan.process(Self.record("orders", offset: 19, key: "k-19", value: nil), names: Self.names, now: 5_000)
        #expect(tombstone.records.isEmpty && tombstone.labels == ["ignored"])
    }

    @Test func whatCannotBeReadIsDeadLetteredWithTheRecordTheReaderAndThePath() throws {
        let orders = try Self.load("""
            workflow_id: orders
            triggers: [{ topic: orders, instance_id: $.event.value.order_id }]
            steps: [{ id: a, type: svc }]
            """)
        let waits = try Self.load("""
            workflow_id: payments
            steps:
              - { id: paid, type: wait_for_event, timeout: 1h, event: { topic: payments, correlate: $.event.value.order_id, equals: $.input.order_id } }
            """)
        let plan = TriggerPlan(workflows: [orders, waits], latest: ["orders": 1, "payments": 1], namespace: "shop", eventsPartitions: 3)
        func reason(_ topic: String, _ value: String, offset: Int64 = 4) -> String? {
            let o = plan.process(Self.record(topic, offset: offset, value: value), names: Self.names, now: 0)
            if o.deadLetter != nil {
                #expect(o.records.last?.topic == "shop.deadletter")
                #expect(o.labels == ["dead_lettered"])
            }
            return o.deadLetter
        }
        #expect(reason("orders", "not json").map { $0.hasPrefix("record orders/0/4: $.event.value is not JSON") && $0.contains("trigger triggers[0] of orders v1 (instance id $.event.value.order_id)") } == true)
        #expect(reason("orders", #"{"amount": 3}"#) == "record orders/0/4: trigger triggers[0] of orders v1: the instance id $.event.value.order_id is missing")
        #expect(reason("orders", #"{"order_id": ["a"]}"#) == "record orders/0/4: trigger triggers[0] of orders v1: the instance id $.event.value.order_id is an array, not a string or a number")
        #expect(reason("orders", #"{"order_id": "~mailbox/x"}"#)?.contains("starts with '~'") == true)
        #expect(reason("orders", #"{"order_id": ""}"#)?.contains("must not be empty") == true)
        let big = #"{"order_id": "o-1", "blob": ""# + String(repeating: "x", count: 300_000) + #""}"#
        #expect(reason("orders", big)?.contains("more than the limit of 262144") == true)
        #expect(reason("payments", #"{"amount": 3}"#) == "record payments/0/4: payments v1 step 'paid': the correlation value $.event.value.order_id is missing")
        #expect(reason("orders", #"{"order_id": "o-1"}"#) == nil)
    }
}

/// A business topic of a test's own, with an engine around it.
struct Shop {
    let engine: Engine
    let topic: String
    let producer: KafkaProducer

    /// Runs `body` with a fresh engine and business topic; stops everything it started, also when it fails.
    static func run(partitions: Int, topicPartitions: Int? = nil, kafka: KafkaClientConfiguration = TestKafka.client, _ body: (Shop) async throws -> Void) async throws {
        try await withEngine(partitions: partitions, kafka: kafka) { engine in
            let topic = TestKafka.uniqueName("orders")
            do {  // the admin client is let go once the topic is made
                let admin = try KafkaAdmin(configuration: kafka, logger: TestKafka.logger)
                if let error = try await admin.createTopics([NewTopic(name: topic, partitions: topicPartitions ?? partitions, replicationFactor: 1)])[topic] ?? nil { throw error }
            }
            let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: engine.kafka), logger: TestKafka.logger)
            let shop = Shop(engine: engine, topic: topic, producer: producer)
            do { try await body(shop) } catch {
                await shop.triggers.stopAll()
                await producer.close()
                throw error
            }
            await shop.triggers.stopAll()
            await producer.close()
        }
    }

    let triggers = TriggerServices()

    /// A workflow whose instances wait for a person (no worker needed), started by records of the shop's topic.
    func registerOrders(when condition: String? = nil, topic: String? = nil, workflowID: String = "orders") async throws {
        let when = condition.map { ", when: '\($0)'" } ?? ""
        _ = try await engine.register("""
            workflow_id: \(workflowID)
            triggers: [{ topic: \(topic ?? self.topic), instance_id: $.event.value.order_id\(when) }]
            steps:
              - { id: approve, type: human_task, assignee: "role:ops" }
            """)
    }

    /// Produces one record per order id (value `{"order_id": id, ...}`), keyed by it, and waits for the broker.
    func produce(_ ids: [String], extra: JSON = [:], to topic: String? = nil) async throws {
        for id in ids {
            var fields: [String: JSON] = [:]
            if case .object(let o) = extra { fields = o }
            fields["order_id"] = .string(id)
            try await producer.enqueue(ProducerRecord(topic: topic ?? self.topic, key: id, value: Data(JSON.object(fields).jsonText.utf8)))
        }
        try await producer.flush()
    }

    func produceRaw(key: String?, value: Data?) async throws {
        try await producer.send(ProducerRecord(topic: topic, key: key, value: value))
    }

    /// A trigger service in this process, on the shop's namespace.
    @discardableResult
    func startTriggers(_ configure: (inout TriggerConfiguration) -> Void = { _ in }) -> TriggerService {
        var c = TriggerConfiguration(client: engine.kafka, names: engine.names)
        c.sessionTimeout = .seconds(6)
        c.maxPollInterval = .seconds(6)
        c.topicRefresh = .seconds(1)
        configure(&c)
        let service = TriggerService(configuration: c, logger: TestKafka.logger)
        triggers.add(service)
        return service
    }

    /// Waits until every id's instance waits for its task. False when some never came because the broker lost a
    /// committed transaction (Tansu 0.6.0, recorded as a known issue: see `lostCommits`); any other shortfall fails.
    func waitForInstances(_ ids: [String], timeout: Duration = .seconds(90), sourceLocation: SourceLocation = #_sourceLocation) async throws -> Bool {
        if await engine.watcher.wait(for: Set(ids), toBe: [.waiting], timeout: timeout) { return true }
        let missing = ids.filter { engine.watcher.state($0) == nil }
        guard !missing.isEmpty else { throw DeadlineExceeded(what: "\(ids.count) instances to wait for their task (all exist, not all wait)") }
        let lost = Set(missing)
        // Where each missing instance stopped: its start (events) and its snapshot (state), as read_committed readers
        // and as read_uncommitted readers see them.
        let events = try await keys(engine.names.events, .readCommitted), rawEvents = try await keys(engine.names.events, .readUncommitted)
        let state = try await keys(engine.names.state, .readCommitted), rawState = try await keys(engine.names.state, .readUncommitted)
        let stuck = lost.filter { (rawEvents.contains($0) && !events.contains($0)) || (rawState.contains($0) && !state.contains($0)) }
        let what = "\(ids.count) instances to wait for their task; \(missing.count) missing, such as \(missing.prefix(5)): "
            + "\(lost.filter(events.contains).count) with their start on the events topic (\(lost.filter(rawEvents.contains).count) read uncommitted), "
            + "\(lost.filter(state.contains).count) with a snapshot on the state topic (\(lost.filter(rawState.contains).count) read uncommitted)"
        if stuck.count == missing.count, try await TestKafka.brokerIsTansu() {
            withKnownIssue("Tansu 0.6.0 sometimes answers a transaction's commit with success and never completes it: read_committed readers stop before its records for good (docs/kafka-compatibility.md)", isIntermittent: true, sourceLocation: sourceLocation) {
                throw DeadlineExceeded(what: what)
            }
            return false
        }
        throw DeadlineExceeded(what: what)
    }

    /// The keys of every record of a topic, read to its end at an isolation level.
    func keys(_ topic: String, _ isolation: KafkaConsumerConfiguration.IsolationLevel) async throws -> Set<String> {
        var c = KafkaConsumerConfiguration(client: engine.kafka, groupID: nil)
        c.isolationLevel = isolation
        c.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: c, logger: TestKafka.logger)
        var out = Set<String>()
        do {
            let count = try await consumer.metadata().topics[topic]?.partitionCount ?? 0
            try consumer.assign((0..<Int32(count)).map { TopicPartitionOffset(topic, $0, offset: TopicPartitionOffset.beginning) })
            var ended = Set<Int32>()
            let deadline = ContinuousClock.now + .seconds(30)
            while ended.count < count, ContinuousClock.now < deadline {
                for event in try await consumer.poll(timeout: .milliseconds(100)) {
                    if case .message(let m) = event, let key = m.keyString { out.insert(key) }
                    if case .partitionEOF(let tp, _) = event { ended.insert(tp.partition) }
                }
            }
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
        return out
    }

    /// Each order id's records on the business topic, oldest first, as `(partition, offset)`.
    func places() async throws -> [String: [(partition: Int32, offset: Int64)]] {
        var out: [String: [(partition: Int32, offset: Int64)]] = [:]
        for m in try await engine.records(topic) {
            guard let value = m.value, let id = (try? JSON.parse(value))?["order_id"]?.stringValue else { continue }
            out[id, default: []].append((m.partition, m.offset))
        }
        return out.mapValues { $0.sorted { ($0.partition, $0.offset) < ($1.partition, $1.offset) } }
    }

    /// The instances on the state topic (every key that has a snapshot), with the request that created each.
    func startRequests() async throws -> [String: String?] {
        var out: [String: String?] = [:]
        for m in try await engine.records(engine.names.state) {
            guard let id = m.keyString, let value = m.value else { continue }
            out[id] = try StateCodec.decode(value).startRequest
        }
        return out
    }

    func deadLetters() async throws -> [KafkaMessage] { try await engine.records(engine.names.deadletter) }

    /// Exactly the instances `ids`, each created by a start whose request names the first record of its order.
    func expectExactlyOnce(_ ids: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let requests = try await startRequests()
        #expect(Set(requests.keys) == Set(ids), "instances on the state topic: \(requests.count), expected \(ids.count)", sourceLocation: sourceLocation)
        let places = try await places()
        for id in ids {
            guard let first = places[id]?.first else {
                Issue.record("no record for \(id)", sourceLocation: sourceLocation)
                continue
            }
            let request = requests[id] ?? nil
            #expect(request == TriggerPlan.requestID(topic: topic, partition: first.partition, offset: first.offset), "\(id): started by \(request ?? "nothing")", sourceLocation: sourceLocation)
        }
        let conflicts = try await deadLetters().compactMap { $0.header(WireHeaders.deadLetterReason).map { String(decoding: $0, as: UTF8.self) } }
        #expect(conflicts.isEmpty, "dead letters: \(conflicts.prefix(3))", sourceLocation: sourceLocation)
    }
}

/// Trigger services a test started in this process; stopped at its end.
final class TriggerServices: Sendable {
    private let running = Mutex<[(TriggerService, Task<Void, any Error>)]>([])

    func add(_ service: TriggerService) {
        running.withLock { $0.append((service, Task { try await service.run() })) }
    }

    func stopAll() async {
        let all = running.withLock { r in defer { r = [] }; return r }
        for (service, _) in all { service.stop() }
        for (_, task) in all { _ = await task.result }
    }
}

extension OneAtATime {
    @Suite("Triggers: business topics start instances exactly once", .serialized, .timeLimit(.minutes(5)))
    struct TriggerTests {
        @Test func fiveHundredOrderRecordsStartExactlyFiveHundredInstances() async throws {
            let metrics = TestMetrics()
            try await Shop.run(partitions: 3) { shop in
                try await shop.registerOrders()
                shop.engine.startCoordinator()
                let service = shop.startTriggers { $0.metricsFactory = metrics }
                let ids = (0..<500).map { "order-\($0)" }
                try await shop.produce(ids, extra: ["amount": 42])
                guard try await shop.waitForInstances(ids) else { return }
                try await shop.expectExactlyOnce(ids)
                // The input is the record's value as it is.
                #expect(shop.engine.watcher.state("order-7")?.input == ["order_id": "order-7", "amount": 42])
                #expect(service.isReady)
                try await waitUntil("the starts to be counted", timeout: .seconds(10)) {
                    metrics.counterTotal(label: "baton_triggers_starts_total", dimensions: [("workflow", "orders")]) == 500
                }
                #expect(metrics.counterTotal(label: "baton_triggers_records_total", dimensions: [("topic", shop.topic), ("outcome", "started")]) == 500)
                #expect(metrics.counterTotal(label: "baton_triggers_records_total", dimensions: [("topic", shop.topic), ("outcome", "dead_lettered")]) == 0)
                #expect(metrics.counterTotal(label: "baton_triggers_transactions_total", dimensions: [("outcome", "committed")]) > 0)
            }
        }

        /// `baton triggers` is killed (SIGKILL) while it writes transactions of five records each, and started
        /// again: every order still starts its one instance.
        @Test func theTriggerProcessKilledInTheMiddleStillStartsEachInstanceOnce() async throws {
            try await Shop.run(partitions: 3) { shop in
                try await shop.registerOrders()
                shop.engine.startCoordinator()
                let ids = (0..<500).map { "order-\($0)" }
                let first = try shop.engine.process(["triggers", "--max-batch", "5", "--session-timeout", "6s", "--max-poll-interval", "6s"])
                defer { first.terminate() }
                // The records arrive over a few seconds (a busy shop), so that the kill lands among transactions.
                let producing = Task {
                    for chunk in stride(from: 0, to: ids.count, by: 10) {
                        try await shop.produce(Array(ids[chunk..<min(chunk + 10, ids.count)]))
                        try await Task.sleep(for: .milliseconds(40))  // pacing the producer, not waiting for anything
                    }
                }
                try await waitUntil("some instances to exist", timeout: .seconds(60)) { shop.engine.watcher.all.count >= 100 }
                first.kill9()
                let atKill = shop.engine.watcher.all.count
                let second = try shop.engine.process(["triggers", "--max-batch", "5", "--session-timeout", "6s", "--max-poll-interval", "6s"])
                defer { second.terminate() }
                try await producing.value
                #expect(atKill < 500, "every instance existed before the kill: nothing was tested")
                guard try await shop.waitForInstances(ids) else { return }
                try await shop.expectExactlyOnce(ids)
                // Every order's start is on the events topic; those of the killed process's open transaction may be
                // there twice (Tansu serves aborted records), which the coordinator took as duplicates.
                let starts = try await shop.engine.records(shop.engine.names.events).filter { $0.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } == "start" }
                #expect(Set(starts.compactMap(\.keyString)) == Set(ids))
                second.terminate()
                #expect(second.output.contains("took partition"), "\(second.output.suffix(2000))")
            }
        }

        /// The broker freezes (SIGSTOP) for longer than the group's session timeout while the triggers write
        /// transactions of five records: they fail or hang, the partitions are read again from their committed
        /// offsets (on Tansu the producers come back fenced and are replaced), and when the broker answers again
        /// the same service, never restarted, starts every order's one instance.
        @Test func aBrokerFrozenWhileTheTriggersWriteLosesNoRecordAndStartsNothingTwice() async throws {
            let broker = try await PrivateBroker()
            defer { broker.stop() }
            let metrics = TestMetrics()
            try await Shop.run(partitions: 2, kafka: broker.client) { shop in
                try await shop.registerOrders()
                shop.engine.startCoordinator()
                let service = shop.startTriggers {
                    $0.maxBatch = 5
                    $0.metricsFactory = metrics
                }
                let ids = (0..<300).map { "order-\($0)" }
                try await shop.produce(ids)
                try await waitUntil("some instances to exist", timeout: .seconds(60)) { shop.engine.watcher.all.count >= 30 }
                broker.pause()
                let frozen = ContinuousClock.now
                // Not a wait for a condition: the outage itself, as long as it must be to outlast the group's session.
                try await Task.sleep(for: .seconds(10))
                broker.resume()
                #expect(ContinuousClock.now - frozen >= .seconds(10))
                guard try await shop.waitForInstances(ids, timeout: .seconds(150)) else { return }
                try await shop.expectExactlyOnce(ids)
                try await waitUntil("the service to be ready again", timeout: .seconds(60)) { service.isReady }
                #expect(metrics.counterTotal(label: "baton_triggers_records_total", dimensions: [("outcome", "dead_lettered")]) == 0)
            }
        }

        /// An at-least-once producer sends some records again (same key, same value, later offsets): each order
        /// still has one instance, started by its first record, and the second starts are ignored as duplicates.
        @Test func recordsProducedTwiceStartOneInstanceEachWithoutConflicts() async throws {
            try await Shop.run(partitions: 3) { shop in
                try await shop.registerOrders()
                shop.engine.startCoordinator()
                shop.startTriggers()
                let ids = (0..<300).map { "order-\($0)" }
                try await shop.produce(ids, extra: ["amount": 7])
                let more = (300..<350).map { "order-\($0)" }
                // A hundred of them again, among fifty new ones.
                try await shop.produce(Array(ids[100..<150]) + Array(more[0..<25]) + Array(ids[150..<200]) + Array(more[25..<50]), extra: ["amount": 7])
                guard try await shop.waitForInstances(ids + more) else { return }
                let places = try await shop.places()
                #expect(places.values.filter { $0.count == 2 }.count == 100)
                // The duplicates' starts reached the coordinator (and were ignored): wait for all of them on the events topic.
                try await waitUntil("every start to be on the events topic", timeout: .seconds(30)) {
                    try await shop.engine.records(shop.engine.names.events).count { $0.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } == "start" } >= 450
                }
                try await shop.expectExactlyOnce(ids + more)
            }
        }

        /// Records that cannot be read, among good ones on one partition: each is dead-lettered with its reason and
        /// where it was, a tombstone is passed over, and the good records after them still start their instances.
        @Test func poisonRecordsAreDeadLetteredAndTheRecordsAfterThemStillStart() async throws {
            try await Shop.run(partitions: 2, topicPartitions: 1) { shop in
                try await shop.registerOrders()
                shop.engine.startCoordinator()
                let service = shop.startTriggers()
                let before = (0..<10).map { "good-\($0)" }
                let after = (10..<20).map { "good-\($0)" }
                try await shop.produce(before)
                let poison: [(key: String?, value: Data?, reason: String)] = [
                    ("p1", Data("this is not JSON".utf8), "$.event.value is not JSON"),
                    ("p2", Data(#"{"amount": 3}"#.utf8), "the instance id $.event.value.order_id is missing"),
                    ("p3", Data(#"{"order_id": ""}"#.utf8), "must not be empty"),
                    ("p4", nil, ""),  // a tombstone: passed over silently
                    ("p5", Data((#"{"order_id": "big", "blob": ""# + String(repeating: "x", count: 300_000) + #""}"#).utf8), "more than the limit of 262144"),
                ]
                for p in poison { try await shop.produceRaw(key: p.key, value: p.value) }
                try await shop.produce(after)
                guard try await shop.waitForInstances(before + after) else { return }
                let letters = try await shop.deadLetters()
                #expect(letters.count == 4)
                let records = try await shop.engine.records(shop.topic)
                for p in poison where p.value != nil {
                    let source = try #require(records.first { $0.keyString == p.key })
                    let letter = try #require(letters.first { $0.keyString == p.key }, "no dead letter for \(p.key ?? "")")
                    func header(_ name: String) -> String? { letter.header(name).map { String(decoding: $0, as: UTF8.self) } }
                    let reason = header(WireHeaders.deadLetterReason) ?? ""
                    #expect(reason.hasPrefix("record \(shop.topic)/0/\(source.offset): "), "\(reason)")
                    #expect(reason.contains(p.reason), "\(reason)")
                    #expect(reason.contains("triggers[0] of orders v1"), "\(reason)")
                    #expect(header(WireHeaders.deadLetterTopic) == shop.topic)
                    #expect(header(WireHeaders.deadLetterPartition) == "0")
                    #expect(header(WireHeaders.deadLetterOffset) == String(source.offset))
                    #expect(letter.value == p.value, "the dead letter keeps the record's value")
                }
                #expect(shop.engine.watcher.state("big") == nil)
                #expect(service.isReady)
                try await shop.expectExactlyOnceIgnoringDeadLetters(before + after)
            }
        }

        /// A trigger with a condition starts only the records it holds for. A definition registered while the
        /// service runs, with a trigger on another topic, makes it read that topic too.
        @Test func recordsThatDoNotMatchTheConditionStartNothingAndANewTriggerIsReadWhenRegistered() async throws {
            let metrics = TestMetrics()
            try await Shop.run(partitions: 2, topicPartitions: 1) { shop in
                try await shop.registerOrders(when: #"$.event.value.status == "placed""#)
                shop.engine.startCoordinator()
                shop.startTriggers { $0.metricsFactory = metrics }
                let placed = (0..<15).map { "placed-\($0)" }
                let cancelled = (0..<15).map { "cancelled-\($0)" }
                for i in 0..<15 {
                    try await shop.produce([placed[i]], extra: ["status": "placed"])
                    try await shop.produce([cancelled[i]], extra: ["status": "cancelled"])
                }
                // The last record matches: once its instance exists, every record before it was read.
                try await shop.produce(["placed-last"], extra: ["status": "placed"])
                guard try await shop.waitForInstances(placed + ["placed-last"]) else { return }
                let requests = try await shop.startRequests()
                #expect(Set(requests.keys) == Set(placed + ["placed-last"]))
                try await waitUntil("the records to be counted", timeout: .seconds(10)) {
                    metrics.counterTotal(label: "baton_triggers_records_total", dimensions: [("topic", shop.topic), ("outcome", "started")]) == 16
                }
                #expect(metrics.counterTotal(label: "baton_triggers_records_total", dimensions: [("topic", shop.topic), ("outcome", "ignored")]) == 15)

                // A new workflow with a trigger on a new topic: the service subscribes again and reads it.
                let returns = TestKafka.uniqueName("returns")
                try await TestKafka.createTopic(returns, partitions: 1)
                try await shop.registerOrders(topic: returns, workflowID: "returns")
                try await shop.produce(["return-1"], to: returns)
                guard try await shop.waitForInstances(["return-1"]) else { return }
                #expect(shop.engine.watcher.state("return-1")?.workflowID == "returns")
                #expect(try await shop.deadLetters().isEmpty)
            }
        }

        /// A record on a topic that wait_for_event steps wait on becomes an `event.published` record for the mailbox
        /// of its correlation value, on the mailbox's partition of the events topic, kept for the longest ttl.
        @Test func aRecordForWaitingStepsGoesToItsMailboxOnTheEventsTopic() async throws {
            try await Shop.run(partitions: 3, topicPartitions: 2) { shop in
                for (id, ttl) in [("short", "ttl: 10m"), ("long", "ttl: 2h")] {
                    _ = try await shop.engine.register("""
                        workflow_id: \(id)
                        steps:
                          - { id: paid, type: wait_for_event, timeout: 3h, event: { topic: \(shop.topic), correlate: $.event.value.order_id, equals: $.input.order_id, \(ttl) } }
                        """)
                }
                shop.startTriggers()
                try await shop.produce(["o-1", "o-2"], extra: ["amount": 5])
                try await shop.produceRaw(key: "x", value: Data(#"{"amount": 1}"#.utf8))
                var published: [MailboxRecordMessage] = []
                try await waitUntil("the mailbox records", timeout: .seconds(60)) {
                    published = []
                    for m in try await shop.engine.records(shop.engine.names.events) {
                        guard let value = m.value, let record = try? Wire.decode(MailboxRecordMessage.self, from: value) else { continue }
                        #expect(m.keyString == record.mailbox)
                        #expect(m.partition == KafkaPartitioner.partition(forKey: record.mailbox, partitionCount: 3))
                        #expect(m.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } == "event.published")
                        published.append(record)
                    }
                    return published.count == 2
                }
                let places = try await shop.places()
                for record in published {
                    let id = try #require(record.event.value["order_id"]?.stringValue)
                    #expect(record.mailbox == Mailbox.key(topic: shop.topic, correlate: "$.event.value.order_id", value: id))
                    let place = try #require(places[id]?.first)
                    #expect(record.event.id == "\(shop.topic)/\(place.partition)/\(place.offset)")
                    #expect(record.event.value == ["order_id": .string(id), "amount": 5])
                    #expect(record.event.key == id)
                    #expect(record.event.expiresAt - record.event.at == Millis.hours(2).value)
                }
                // The record without an order id correlates with nothing and nothing else reads it.
                try await waitUntil("the uncorrelated record to be dead-lettered", timeout: .seconds(30)) { try await shop.deadLetters().count == 1 }
                let reason = try await shop.deadLetters().first?.header(WireHeaders.deadLetterReason).map { String(decoding: $0, as: UTF8.self) } ?? ""
                #expect(reason.contains("the correlation value $.event.value.order_id is missing"), "\(reason)")
                #expect(reason.contains("2 wait_for_event steps (long v1 step 'paid', short v1 step 'paid')"), "\(reason)")
            }
        }
    }
}

extension Shop {
    /// As `expectExactlyOnce`, for a test whose dead letters are expected (and checked on their own).
    func expectExactlyOnceIgnoringDeadLetters(_ ids: [String]) async throws {
        let requests = try await startRequests()
        #expect(Set(requests.keys) == Set(ids))
        let places = try await places()
        for id in ids {
            let first = try #require(places[id]?.first)
            #expect(requests[id] == TriggerPlan.requestID(topic: topic, partition: first.partition, offset: first.offset))
        }
    }
}

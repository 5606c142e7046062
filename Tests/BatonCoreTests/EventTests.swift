import BatonCore
import Foundation
import Testing

/// Event waits, signals and triggers in the pure core: the saga's side (subscribe, receive, time out), the
/// mailbox where records meet waiting attempts, and what validation refuses.
@Suite("Events, signals and mailboxes")
struct EventTests {
    static let orderYAML = """
        workflow_id: order
        signals: [expedite]
        triggers:
          - topic: shop.orders
            when: $.event.value.status == "placed"
            instance_id: $.event.value.order_id
            input: { order_id: $.event.value.order_id, amount: $.event.value.total }
        steps:
          - id: reserve
            type: svc
            compensation: { type: release }
          - id: charge
            type: svc
            depends_on: [reserve]
            compensation: { type: refund }
          - id: await_payment
            type: wait_for_event
            depends_on: [charge]
            timeout: 10m
            event: { topic: payments.settled, correlate: $.event.value.order_id, equals: $.input.order_id, ttl: 1h }
          - id: ship_express
            type: svc
            depends_on: [await_payment]
            when: $.signals.expedite
          - id: ship
            type: svc
            depends_on: [await_payment]
            when: "!$.signals.expedite"
        """

    static func record(_ value: JSON, offset: Int64 = 0, at: Timestamp = 0, ttl: Int64 = 3_600_000) -> EventRecord {
        EventRecord(topic: "payments.settled", partition: 0, offset: offset, key: nil, value: value, at: at, expiresAt: at + ttl)
    }

    var subscriptions: (Simulator) -> [EventSubscription] = { sim in
        sim.effects.compactMap { if case .subscribe(let s) = $0.effect { s } else { nil } }
    }

    @Test func aWaitSubscribesToItsMailboxAndTheRecordsValueBecomesTheOutput() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-17"])
        sim.complete("reserve")
        sim.complete("charge", at: 1_000)
        let subscription = try #require(subscriptions(sim).first)
        #expect(subscription.mailbox == Mailbox.key(topic: "payments.settled", correlate: "$.event.value.order_id", value: "o-17"))
        #expect(subscription.step == "await_payment" && subscription.attempt == 1)
        #expect(subscription.since == 1_000 && subscription.until == 601_000 && subscription.ttl == .hours(1))
        #expect(sim.state.status == .waiting)  // only waiting for the outside: held compact
        sim.send(.eventReceived(step: "await_payment", attempt: 1, mailbox: subscription.mailbox, event: Self.record(["order_id": "o-17", "paid": 42])))
        #expect(sim.lastOutcome == .applied)
        #expect(sim.state.steps[2].output == ["order_id": "o-17", "paid": 42])
        #expect(!sim.state.timers.contains { $0.key.kind == .stepTimeout && $0.key.step == 2 })
        #expect(sim.command("ship") != nil && sim.command("ship_express") == nil)  // no signal: the normal branch
        // The same record again (redelivered) changes nothing.
        sim.send(.eventReceived(step: "await_payment", attempt: 1, mailbox: subscription.mailbox, event: Self.record(["order_id": "o-17"])))
        if case .ignored(.stale) = sim.lastOutcome {} else { Issue.record("expected stale, got \(sim.lastOutcome)") }
    }

    @Test func anEventThatNeverComesTimesTheStepOutUnsubscribesAndCompensates() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-1"])
        sim.complete("reserve", at: 10)
        sim.complete("charge", at: 20)
        sim.advance(to: 20 + 10 * 60_000)
        #expect(sim.state.status == .compensating)
        #expect(sim.state.reason?.contains("no record on payments.settled matched within 10m") == true)
        let unsubscribed = sim.effects.compactMap { if case .unsubscribe(let s) = $0.effect { s } else { nil } }
        #expect(unsubscribed.map(\.step) == ["await_payment"])
        #expect(sim.compensations.map(\.step) == ["charge"])  // reverse order: charge first, then reserve
        sim.completeCompensation("charge")
        #expect(sim.compensations.map(\.step) == ["charge", "reserve"])
        sim.completeCompensation("reserve")
        #expect(sim.state.status == .failed)
    }

    @Test func aSignalChangesTheBranchAWhenTakes() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-2"])
        sim.send(.signal(name: "expedite", data: true, by: "ops", request: "r-1"))
        #expect(sim.lastOutcome == .applied)
        #expect(sim.state.signals == ["expedite": true])
        // Sent again with the same request: counted once.
        sim.send(.signal(name: "expedite", data: false, by: "ops", request: "r-1"))
        if case .ignored(.duplicate) = sim.lastOutcome {} else { Issue.record("expected a duplicate, got \(sim.lastOutcome)") }
        sim.complete("reserve")
        sim.complete("charge")
        let mailbox = try #require(subscriptions(sim).first).mailbox
        sim.send(.eventReceived(step: "await_payment", attempt: 1, mailbox: mailbox, event: Self.record(["ok": true])))
        #expect(sim.command("ship_express") != nil)
        #expect(sim.command("ship") == nil)
        #expect(sim.status("ship") == .skipped)
    }

    @Test func anUnknownSignalIsRefusedWithTheNamesItAccepts() throws {
        var sim = Simulator(try workflow(Self.orderYAML))
        sim.send(.signal(name: "expedit", data: true, by: "ops", request: "r-1"))
        guard case .ignored(.unknown(let why)) = sim.lastOutcome else {
            Issue.record("expected unknown, got \(sim.lastOutcome)")
            return
        }
        #expect(why.contains("did you mean 'expedite'"))
        #expect(sim.state.signals == nil)
    }

    @Test func aSignalStepCompletesWithTheSignalsDataAlsoWhenItCameFirst() throws {
        let yaml = """
            workflow_id: approvals
            steps:
              - { id: prepare, type: svc }
              - { id: go, type: signal, signal: go_ahead, timeout: 1h, depends_on: [prepare] }
              - { id: run, type: svc, depends_on: [go], input: { by: $.steps.go.output.by } }
            """
        var waiting = Simulator(try workflow(yaml))
        waiting.complete("prepare")
        #expect(waiting.state.status == .waiting)
        waiting.send(.signal(name: "go_ahead", data: ["by": "ann"], by: "ann", request: "r-1"))
        #expect(waiting.command("run")?.input == ["by": "ann"])

        var early = Simulator(try workflow(yaml))
        early.send(.signal(name: "go_ahead", data: ["by": "bo"], by: "bo", request: "r-1"))
        early.complete("prepare")
        #expect(early.command("run")?.input == ["by": "bo"])

        var late = Simulator(try workflow(yaml))
        late.complete("prepare", at: 0)
        late.advance(to: 3_600_000)
        #expect(late.state.reason?.contains("no signal 'go_ahead' came within 1h") == true)
    }

    @Test func aWaitWhoseValueIsMissingFailsAtOnceWithTheReason() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: [:])
        sim.complete("reserve")
        sim.complete("charge")
        #expect(subscriptions(sim).isEmpty)
        #expect(sim.state.reason?.contains("$.input.order_id is missing or null") == true)
        #expect(sim.state.status == .compensating)
    }

    @Test func aFailureElsewhereStopsTheWaitAndItsMailboxForgetsIt() throws {
        let yaml = """
            workflow_id: parallel
            steps:
              - { id: work, type: svc, retry: { max_attempts: 1 } }
              - { id: wait, type: wait_for_event, timeout: 1h, event: { topic: t, equals: $.instance.id } }
            """
        var sim = Simulator(try workflow(yaml))
        #expect(subscriptions(sim).map(\.mailbox) == [Mailbox.key(topic: "t", correlate: "$.event.key", value: "i-1")])
        sim.fail("work", retryable: false)
        let unsubscribed = sim.effects.compactMap { if case .unsubscribe(let s) = $0.effect { s } else { nil } }
        #expect(unsubscribed.count == 1)
        #expect(sim.state.status == .failed)  // nothing to compensate: the wait did not hold the failure path
    }

    // MARK: Mailboxes

    static func subscription(_ instance: String, attempt: Int = 1, since: Timestamp = 0, ttl: Millis = .minutes(10), broadcast: Bool = false) -> EventSubscription {
        EventSubscription(
            mailbox: "~mailbox/t/$.event.key/k", instanceID: instance, workflowID: "w", step: "wait", attempt: attempt, since: since, ttl: ttl,
            until: since + 3_600_000, broadcast: broadcast)
    }

    static func deliveries(_ t: MailboxTransition) -> [(String, String)] {
        t.effects.compactMap { if case .deliver(let s, let r) = $0 { (s.instanceID, r.id) } else { nil } }
    }

    @Test func aRecordThatArrivesFirstIsKeptAndDeliveredWhenTheInstanceWaits() {
        var box = Mailbox(key: "~mailbox/t/$.event.key/k")
        var t = Mailbox.apply(box, .publish(Self.record(["n": 1], at: 1_000)), now: 1_000)
        #expect(Self.deliveries(t).isEmpty && t.mailbox.messages.count == 1)
        box = t.mailbox
        t = Mailbox.apply(box, .subscribe(Self.subscription("a", since: 5_000)), now: 5_000)
        #expect(Self.deliveries(t).map(\.0) == ["a"])
        #expect(t.mailbox.messages.isEmpty && t.mailbox.subscriptions.isEmpty)
        // The same record read again (a trigger process that crashed before committing): nothing.
        t = Mailbox.apply(t.mailbox, .publish(Self.record(["n": 1], at: 6_000)), now: 6_000)
        #expect(t.outcome != .applied)
    }

    @Test func aRecordOlderThanTheWaitsTimeToLiveIsNotForIt() {
        let box = Mailbox.apply(Mailbox(key: "k"), .publish(Self.record(["n": 1], at: 0)), now: 0).mailbox
        let t = Mailbox.apply(box, .subscribe(Self.subscription("a", since: 700_000, ttl: .minutes(10))), now: 700_000)
        #expect(Self.deliveries(t).isEmpty)
        #expect(t.mailbox.subscriptions.count == 1 && t.mailbox.messages.count == 1)
    }

    @Test func oneRecordSatisfiesOneWaitingInstanceUnlessTheyBroadcast() {
        var box = Mailbox(key: "k")
        for id in ["a", "b"] { box = Mailbox.apply(box, .subscribe(Self.subscription(id)), now: 10).mailbox }
        var t = Mailbox.apply(box, .publish(Self.record(["n": 1], offset: 1, at: 20)), now: 20)
        #expect(Self.deliveries(t).map(\.0) == ["a"])  // the oldest waiter
        t = Mailbox.apply(t.mailbox, .publish(Self.record(["n": 2], offset: 2, at: 30)), now: 30)
        #expect(Self.deliveries(t).map(\.0) == ["b"])

        var shared = Mailbox(key: "k")
        for id in ["a", "b"] { shared = Mailbox.apply(shared, .subscribe(Self.subscription(id, broadcast: true)), now: 10).mailbox }
        t = Mailbox.apply(shared, .publish(Self.record(["n": 1], at: 20)), now: 20)
        #expect(Self.deliveries(t).map(\.0) == ["a", "b"])
        #expect(t.mailbox.messages.count == 1)  // kept for later broadcast waiters
        t = Mailbox.apply(t.mailbox, .subscribe(Self.subscription("c", since: 40, broadcast: true)), now: 40)
        #expect(Self.deliveries(t).map(\.0) == ["c"])
    }

    @Test func aRecordGivenBackGoesToTheNextAttemptAndExpiryCleansUp() {
        var box = Mailbox.apply(Mailbox(key: "k"), .subscribe(Self.subscription("a")), now: 0).mailbox
        let record = Self.record(["n": 1], at: 10, ttl: 1_000)
        var t = Mailbox.apply(box, .publish(record), now: 10)
        #expect(Self.deliveries(t).map(\.0) == ["a"])
        box = t.mailbox
        // Attempt 1 had timed out meanwhile; attempt 2 waits; the record comes back and goes to it.
        box = Mailbox.apply(box, .subscribe(Self.subscription("a", attempt: 2, since: 20)), now: 20).mailbox
        t = Mailbox.apply(box, .returned(record), now: 30)
        #expect(t.effects.contains { if case .deliver(let s, _) = $0 { s.attempt == 2 } else { false } })
        // Expiry: a kept record past its time-to-live is dropped; the mailbox ends up empty.
        box = Mailbox.apply(Mailbox(key: "k"), .publish(Self.record(["n": 2], offset: 9, at: 0, ttl: 100)), now: 0).mailbox
        #expect(box.nextExpiry == 100)
        t = Mailbox.apply(box, .expire, now: 100)
        #expect(t.mailbox.isEmpty)
        #expect(t.effects.contains { if case .dropped = $0 { true } else { false } })
        #expect(Mailbox.apply(t.mailbox, .expire, now: 200).outcome != .applied)
    }

    @Test func aMailboxStaysBounded() {
        var box = Mailbox(key: "k")
        for i in 0..<(Mailbox.maxMessages + 5) {
            box = Mailbox.apply(box, .publish(Self.record(["i": .number(Double(i))], offset: Int64(i), at: 0)), now: 0).mailbox
        }
        #expect(box.messages.count == Mailbox.maxMessages)
        #expect(box.messages.first?.offset == 5)  // the oldest went first
    }

    // MARK: Validation

    @Test func validationCatchesWhatIssue11Names() {
        let errors = definitionErrors("""
            workflow_id: bad
            signals: [expedite]
            triggers:
              - { topic: baton.events, instance_id: $.input.id }
              - { topic: shop.orders, when: "$.steps.x.output" }
            steps:
              - { id: a, type: svc, when: "$.signals.expedit" }
              - { id: w, type: wait_for_event, event: { topic: payments, correlate: $.input.x, equals: $.steps.later.output.id } }
              - { id: later, type: svc, depends_on: [w], input: { e: $.event.value } }
              - { id: s, type: signal, timeout: 1h }
            """).map(\.description)
        let expected = [
            "triggers[0].topic: 'baton.events' is one of the engine's topics",
            "triggers[0].instance_id: $.input.id: a trigger reads the record",
            "triggers[1].when: $.steps.x.output: a trigger reads the record",
            "steps[0].when: $.signals.expedit reads unknown signal 'expedit' (did you mean 'expedite'?)",
            "steps[1].timeout: missing (required for a wait_for_event step)",
            "steps[1].event.correlate: $.input.x must read the record",
            "steps[2].input.e: $.event.value: $.event is the record",
            "steps[3].signal: missing (required)",
        ]
        for e in expected {
            #expect(errors.contains { $0.hasPrefix(e) }, "missing: \(e)\nin: \(errors.joined(separator: "\n"))")
        }
    }

    @Test func theValueAWaitWaitsForMustBeKnownWhenItStarts() {
        let errors = definitionErrors("""
            workflow_id: w
            signals: [s]
            steps:
              - { id: w, type: wait_for_event, timeout: 1m, event: { topic: payments, equals: $.steps.later.output.id } }
              - { id: later, type: svc, depends_on: [w] }
              - { id: x, type: wait_for_event, timeout: 1m, event: { topic: payments, equals: $.signals.s } }
            """).map(\.description)
        #expect(errors.contains { $0.hasPrefix("steps[0].event.equals: $.steps.later.output.id reads step 'later', which is not an ancestor of 'w'") }, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("steps[2].event.equals: $.signals.s: the value an instance waits for comes from") }, "\(errors)")
    }

    @Test func aTriggerWithItsDefaultsAndAnotherNamespaceValidate() throws {
        let w = try workflow("""
            workflow_id: t
            triggers: [{ topic: orders }]
            steps: [{ id: a, type: svc }]
            """)
        #expect(w.definition.triggers == [TriggerDefinition(topic: "orders")])
        #expect(w.triggerConditions == [nil])
        let text = Data("workflow_id: t\ntriggers: [{ topic: acme.orders }]\nsteps: [{ id: a, type: svc }]\n".utf8)
        #expect(throws: DefinitionErrors.self) { try DefinitionLoader.load(text, namespace: "acme") }
        #expect(throws: Never.self) { try DefinitionLoader.load(text) }
    }

    @Test func triggerPathsResolveAgainstTheRecord() throws {
        let w = try workflow(Self.orderYAML)
        let trigger = w.definition.triggers[0]
        let event = EventRecord.pathValue(
            topic: "shop.orders", partition: 3, offset: 99, key: "o-5", value: ["order_id": "o-5", "total": 12, "status": "placed"], headers: ["h": "v"],
            timestamp: 7)
        let context = PathContext.record(event)
        #expect(w.triggerConditions[0]?.evaluate(in: context) == true)
        #expect(try ValuePath(parsing: trigger.instanceID).resolve(in: context) == "o-5")
        #expect(InputTemplate.render(trigger.input!, in: context) == ["order_id": "o-5", "amount": 12])
        #expect(try ValuePath(parsing: "$.event.headers.h").resolve(in: context) == "v")
        #expect(try ValuePath(parsing: "$.event.offset").resolve(in: context) == 99)
        #expect(Mailbox.correlationText(17) == "17" && Mailbox.correlationText("x") == "x" && Mailbox.correlationText(.null) == nil)
    }

    @Test func signalsAndWaitsSurviveTheSnapshotCodecs() throws {
        var sim = Simulator(try workflow(Self.orderYAML), input: ["order_id": "o-3"])
        sim.send(.signal(name: "expedite", data: ["why": "vip"], by: "ops", request: "r"))
        sim.complete("reserve")
        sim.complete("charge")
        let text = StateCodec.encode(sim.state)
        #expect(try StateCodec.decode(text) == sim.state)
        #expect(try StateCodec.decode(StateCodec.encodeSnapshot(sim.state)).signals == ["expedite": ["why": "vip"]])
    }
}

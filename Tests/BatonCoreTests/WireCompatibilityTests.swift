import BatonCore
import BatonWire
import Crypto
import Foundation
import Testing

/// Rolling upgrades (docs/wire-protocol.md, "Compatibility"): a release reads every record the release before it
/// wrote. `WireFixtures/<release>/` keeps one record of every kind each release writes, made by that release's own
/// writers; fixtures are never edited, only added. These tests check that today's readers accept every fixture of
/// every release, and that today's writers still write what the newest fixtures hold: a writer that changes makes
/// the second test fail, and the change then needs a new fixtures folder and a compatibility note (a new kind or
/// field is written only once every member of the namespace reads it).
@Suite struct WireCompatibilityTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("WireFixtures")
    /// The folder of the release being built; `BATON_WRITE_WIRE_FIXTURES=1` fills it from today's writers.
    static let current = "2026-12"

    /// What reads each fixture, by its file name's first part (the topic it is written to).
    static func read(_ name: String, _ data: Data) throws {
        switch name.split(separator: ".").first.map(String.init) ?? "" {
        case "events": _ = try EventMessage.decodeRecord(data)
        case "commands": _ = try Wire.decode(CommandMessage.self, from: data)
        case "state": _ = try StateCodec.decode(Data([StateCodec.magic, StateCodec.version]) + data)
        case "outputs": _ = try Wire.decode(OutputRecord.self, from: data)
        case "tasks": _ = try Wire.decode(TaskRecord.self, from: data)
        case "definitions": _ = try Wire.decode(DefinitionRecord.self, from: data)
        case "alerts": _ = try Wire.decode(AlertRecord.self, from: data)
        case "notifications": _ = try Wire.decode(NotificationRecord.self, from: data)
        case "mailboxes": _ = try Wire.decode(MailboxSnapshot.self, from: data)
        default: throw Wire.DecodeError("no reader for the fixture \(name): name it <topic>.<kind>.json")
        }
    }

    /// One record of every kind this release writes, from one loan taken through the pure core and written by the
    /// release's own writers. The state snapshot's file holds its JSON, after the two bytes of its format.
    static func written() throws -> [String: Data] {
        let loan = try DefinitionLoader.load(try Data(contentsOf: examplesDirectory.appendingPathComponent("loan-processing.yaml")), source: "loan-processing.yaml")
        var sim = Simulator(loan, input: ["applicant": ["email": "ann@example.com"], "amount": 25_000], instanceID: "loan-7", at: 1_765_000_000_000)
        let command = try #require(sim.command("identity_check"))
        let replyTo = ReplyTo(topic: "baton.events", partition: 3)
        var records: [String: Data] = [:]
        func put<T: Encodable>(_ name: String, _ value: T) { records[name] = Wire.encode(value) }

        put("events.start", StartMessage(instanceID: "loan-7", workflowID: "loan_processing", version: 1, input: sim.state.input, sentAt: 1_765_000_000_000, requestID: "req-1"))
        let sent = CommandMessage(command, replyTo: replyTo, token: "tok-1")
        put("commands.step.command", sent)
        put("events.step.heartbeat", HeartbeatMessage(sent, details: ["done": 1, "of": 3]))
        put("events.step.completed", ResultMessage(kind: .stepCompleted, instanceID: "loan-7", step: command.step, item: nil, attempt: 1, output: ["verified": true], idempotencyKey: command.idempotencyKey, token: "tok-1"))
        put("events.step.failed", ResultMessage(kind: .stepFailed, instanceID: "loan-7", step: command.step, item: nil, attempt: 1, error: "bureau down", retryable: true, idempotencyKey: command.idempotencyKey, token: "tok-1"))
        put("events.compensation.completed", ResultMessage(kind: .compensationCompleted, instanceID: "loan-7", step: "disburse", item: nil, attempt: 1, idempotencyKey: nil, token: "tok-2"))
        put("events.compensation.failed", ResultMessage(kind: .compensationFailed, instanceID: "loan-7", step: "disburse", item: nil, attempt: 1, error: "refund refused", retryable: false, idempotencyKey: nil, token: "tok-2"))
        put("events.timer.fired", TimerMessage(instanceID: "loan-7", timer: TimerKey(kind: .stepTimeout, step: 0, attempt: 1), dueAt: 1_765_000_030_000))

        // Records that act for a person are signed (a fixed key: Ed25519 signatures are deterministic).
        let signer = AuthoritySigner(keyID: "server-1", key: try Curve25519.Signing.PrivateKey(rawRepresentation: Data(repeating: 7, count: 32)))
        let manager = Principal(subject: "carol", roles: ["credit_manager"])
        let operatorPerson = Principal(subject: "olga", roles: [Principal.operatorRole])
        var decision = DecisionMessage(instanceID: "loan-7", taskID: "loan-7/credit_manager_approval/1", step: "credit_manager_approval", attempt: 1, approved: true, by: "carol", comment: "ok", data: ["limit": 20_000], requestID: "req-2")
        try signer.sign(&decision, as: manager, now: 1_765_000_100_000)
        put("events.task.decided", decision)
        var claim = ClaimMessage(instanceID: "loan-7", taskID: "loan-7/credit_manager_approval/1", step: "credit_manager_approval", attempt: 1, claimant: "carol", by: "carol", requestID: "req-3")
        try signer.sign(&claim, as: manager, now: 1_765_000_090_000)
        put("events.task.claimed", claim)
        var operate = OperatorMessage(instanceID: "loan-7", command: .retry, step: "disburse", reason: "bank back", by: "olga", requestID: "req-4")
        try signer.sign(&operate, as: operatorPerson, now: 1_765_000_200_000)
        put("events.operator", operate)
        var signal = SignalMessage(instanceID: "loan-7", name: "documents_received", data: ["pages": 4], by: "olga", requestID: "req-5", sentAt: 1_765_000_300_000)
        try signer.sign(&signal, as: operatorPerson, now: 1_765_000_300_000)
        put("events.signal", signal)

        let event = EventRecord(topic: "payments.settled", partition: 1, offset: 42, key: "loan-7", value: ["loan": "loan-7"], headers: ["source": "bank"], timestamp: 1_765_000_400_000, at: 1_765_000_400_100, expiresAt: 1_765_086_800_100)
        let mailbox = Mailbox.key(topic: "payments.settled", correlate: "$.value.loan", value: "loan-7")
        let subscription = EventSubscription(mailbox: mailbox, instanceID: "loan-7", workflowID: "loan_processing", step: "wait_settlement", attempt: 1, since: 1_765_000_350_000, ttl: .minutes(1), until: 1_765_086_750_000, broadcast: false)
        put("events.event.published", MailboxRecordMessage(mailbox: mailbox, event: event))
        put("events.event.returned", MailboxRecordMessage(kind: .eventReturned, mailbox: mailbox, event: event))
        put("events.event.subscribed", SubscriptionMessage(kind: .eventSubscribed, subscription: subscription))
        put("events.event.unsubscribed", SubscriptionMessage(kind: .eventUnsubscribed, subscription: subscription))
        put("events.event.received", EventReceivedMessage(instanceID: "loan-7", step: "wait_settlement", attempt: 1, mailbox: mailbox, event: event))
        var box = Mailbox(key: mailbox)
        box.messages = [event]
        box.subscriptions = [subscription]
        put("mailboxes.mailbox", MailboxSnapshot(mailbox: box))

        // The loan through its checks to the credit manager's task; its snapshot then.
        sim.send(.stepCompleted(step: "identity_check", item: nil, attempt: 1, output: ["verified": true]), at: 1_765_000_010_000)
        sim.send(.stepCompleted(step: "credit_score", item: nil, attempt: 1, output: ["score": 720]), at: 1_765_000_020_000)
        let task = try #require(sim.tasks.first)
        records["state.snapshot"] = StateCodec.encodeSnapshot(sim.state).dropFirst(2)
        put("outputs.output", OutputRecord(instanceID: "loan-7", step: "credit_score", item: nil, attempt: 1, output: ["score": 720]))
        put("tasks.task", TaskRecord(taskID: task.taskID, status: .open, task: task, decidedBy: nil, partition: 3, at: 1_765_000_020_000))
        put("definitions.definition", DefinitionRecord(workflowID: "loan_processing", version: 1, document: "workflow_id: loan_processing\n", registeredAt: 1_764_999_000_000))
        put("alerts.alert", AlertRecord(alert: AlertMessage(severity: .error, instanceID: "loan-7", workflowID: "loan_processing", step: "disburse", message: "'disburse' failed after 3 attempts", partition: 3), at: 1_765_000_500_000))
        put("notifications.notification", NotificationRecord(notification: NotificationMessage(recipient: "role:credit_manager", subject: "Approve loan-7", instanceID: "loan-7", taskID: task.taskID), at: 1_765_000_020_000))
        var compensation = command
        compensation.isCompensation = true
        put("commands.compensation.command", CommandMessage(compensation, replyTo: replyTo, token: "tok-2"))
        return records
    }

    static func releases() throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: fixtures, includingPropertiesForKeys: nil).filter { $0.hasDirectoryPath }.sorted { $0.path < $1.path }
    }

    @Test func everyKindTheReleaseWritesHasAFixture() throws {
        let written = try Self.written()
        if ProcessInfo.processInfo.environment["BATON_WRITE_WIRE_FIXTURES"] == "1" {
            let folder = Self.fixtures.appendingPathComponent(Self.current)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            for (name, data) in written { try data.write(to: folder.appendingPathComponent("\(name).json")) }
        }
        let kinds = Set(written.keys.map { name in String(name.split(separator: ".", maxSplits: 1)[1]) })
        let unwritten = Set(Wire.Kind.allCases.map(\.rawValue)).subtracting(kinds).subtracting(["snapshot"])
        #expect(unwritten.isEmpty, "record kinds with no fixture: \(unwritten.sorted())")
    }

    @Test func todaysWritersWriteWhatTheNewestFixturesHold() throws {
        let newest = try #require(try Self.releases().last, "no fixtures in \(Self.fixtures.path)")
        for (name, data) in try Self.written() {
            let file = newest.appendingPathComponent("\(name).json")
            let kept = try #require(FileManager.default.contents(atPath: file.path), "\(name): no fixture in \(newest.lastPathComponent)")
            #expect(
                try JSON.parse(kept) == JSON.parse(data),
                "\(name) is written differently from \(newest.lastPathComponent)'s fixture: readers of the release before may not read it. Add a fixtures folder for this release (BATON_WRITE_WIRE_FIXTURES=1 after changing `current`) and follow the policy in docs/wire-protocol.md")
        }
    }

    @Test func todaysReadersReadEveryFixtureOfEveryRelease() throws {
        var read = 0
        for release in try Self.releases() {
            for file in try FileManager.default.contentsOfDirectory(at: release, includingPropertiesForKeys: nil) where file.pathExtension == "json" {
                let name = file.deletingPathExtension().lastPathComponent
                do {
                    try Self.read(name, try Data(contentsOf: file))
                    read += 1
                } catch {
                    Issue.record("\(release.lastPathComponent)/\(name) is no longer read: \(error)")
                }
            }
        }
        #expect(read >= Wire.Kind.allCases.count, "only \(read) fixtures read")
    }
}

import BatonCore
import BatonPlanning
import BatonRecords
import BatonWire
import Foundation
import Logging
import Testing

/// The coordinator's batch as a plan, with no broker: what a batch of events changes in a partition's instances
/// and mailboxes, what it writes, and what a rollback restores. The records are read back as the engine's
/// readers would read them.
@Suite("PartitionBook: a batch of events planned without I/O")
struct PartitionBookTests {
    static let names = TopicNames(namespace: "plan")
    static let partitionCount = 3
    static let saga = """
        workflow_id: order
        steps:
          - { id: reserve, type: inventory }
          - { id: charge, type: payments, depends_on: [reserve] }
        """
    static let tokens = try! ResultTokens(secret: Data(repeating: 7, count: 32))  // a constant, valid secret

    /// An instance id whose home is partition `p` (murmur2 of the key, as producers place it).
    static func id(on p: Int32, _ prefix: String = "o") -> String {
        (1...).lazy.map { "\(prefix)-\($0)" }.first { KafkaPartitioner.partition(forKey: $0, partitionCount: partitionCount) == p }!
    }

    static func book(partition: Int32 = 1, maxRecordBytes: Int = 990_000, registered: Bool = true) throws -> PartitionBook {
        let workflow = try DefinitionLoader.load(Data(saga.utf8))
        let rules = PlanningRules(
            partition: partition, partitionCount: partitionCount, names: names, identity: "test/1", settings: SagaSettings(),
            security: CoordinatorSecurity(trustedKeys: .none, resultTokens: tokens), maxRecordBytes: maxRecordBytes,
            logger: Logger(label: "baton.test.plan") { _ in SwiftLogNoOpLogHandler() }, tracer: nil,
            definitions: { id, _ in registered && id == workflow.id ? workflow : nil })
        return PartitionBook(rules: rules)
    }

    static func message(_ value: Data?, offset: Int64, partition: Int32 = 1, at timestamp: Int64? = nil) -> KafkaMessage {
        KafkaMessage(topic: names.events, partition: partition, offset: offset, key: nil, value: value, timestamp: timestamp)
    }

    static func start(_ id: String, offset: Int64, input: JSON = ["order": "A-1"]) -> KafkaMessage {
        message(Wire.encode(StartMessage(instanceID: id, workflowID: "order", version: nil, input: input, sentAt: 0, requestID: "r-\(offset)")), offset: offset)
    }

    /// The command records of a plan, decoded.
    static func commands(_ plan: BatchPlan) throws -> [CommandMessage] {
        try plan.outgoing.filter { if case .command = $0.origin { true } else { false } }.map { try Wire.decode(CommandMessage.self, from: $0.record.value ?? Data()) }
    }

    @Test func aStartWritesItsSnapshotAndFirstCommandAndARollBackUndoesIt() throws {
        var book = try Self.book()
        let id = Self.id(on: 1)
        let plan = book.plan([Self.start(id, offset: 7)], now: 1_000, refused: [:], dispatches: Dispatches())
        #expect(!plan.missesWorkflows)
        #expect(book.instances[id]?.status == .running)
        let snapshot = try #require(plan.outgoing.first { $0.origin == .snapshot(id) })
        #expect(snapshot.record.topic == Self.names.state && snapshot.record.partition == 1)
        #expect(snapshot.record.headers.contains(KafkaHeader(key: WireHeaders.eventsOffset, string: "8")), "the snapshot names the events offset after the batch")
        #expect(try StateCodec.decode(snapshot.record.value ?? Data()).instanceID == id)
        let commands = try Self.commands(plan)
        #expect(commands.map(\.step) == ["reserve"])
        #expect(commands.first?.replyTo == ReplyTo(topic: Self.names.events, partition: 1))
        #expect(plan.outgoing.first { if case .command = $0.origin { true } else { false } }?.record.topic == Self.names.commands("inventory"))
        #expect(plan.observed.started == ["order"])

        book.rollBack(plan)
        #expect(book.instances[id] == nil, "nothing of a batch that was not written stays")
        #expect(book.instances.count == 0)
    }

    @Test func aResultIsAppliedWithItsCommandsTokenAndRefusedWithout() throws {
        var book = try Self.book()
        let id = Self.id(on: 1)
        let started = book.plan([Self.start(id, offset: 0)], now: 1_000, refused: [:], dispatches: Dispatches())
        let command = try #require(try Self.commands(started).first)
        let forged = ResultMessage(kind: .stepCompleted, instanceID: id, step: "reserve", item: nil, attempt: 1, output: [:], idempotencyKey: nil, token: nil)
        let answered = ResultMessage.completed(command, output: ["reserved": true])
        let plan = book.plan(
            [Self.message(Wire.encode(forged), offset: 1), Self.message(Wire.encode(answered), offset: 2)], now: 2_000, refused: [:], dispatches: Dispatches())
        #expect(plan.observed.deadLetters == [.badToken], "a result without its command's token is not applied")
        let letter = try #require(plan.outgoing.first { $0.origin == .deadLetter(offset: 1) })
        #expect(letter.record.topic == Self.names.deadletter)
        #expect(letter.record.headers.contains(KafkaHeader(key: WireHeaders.deadLetterCode, string: "bad_token")))
        #expect(try Self.commands(plan).map(\.step) == ["charge"], "the answered step's dependant is sent")
        #expect(book.instances[id]?.status == .running)
    }

    @Test func unreadableMisroutedAndConflictingRecordsAreDeadLetteredWithTheirReason() throws {
        var book = try Self.book()
        let here = Self.id(on: 1)
        let elsewhere = Self.id(on: 2)
        let conflicting = StartMessage(instanceID: here, workflowID: "order", version: nil, input: ["order": "B-2"], sentAt: 0, requestID: "r-x")
        let plan = book.plan(
            [
                Self.message(nil, offset: 0), Self.message(Data("{".utf8), offset: 1), Self.start(elsewhere, offset: 2), Self.start(here, offset: 3),
                Self.start(here, offset: 4), Self.message(Wire.encode(conflicting), offset: 5),
            ], now: 1_000, refused: [:], dispatches: Dispatches())
        #expect(plan.observed.deadLetters == [.unreadable, .unreadable, .wrongPartition, .conflict])
        #expect(plan.observed.ignored == 1, "the same start again is a duplicate, not an error")
        #expect(plan.outgoing.compactMap { if case .deadLetter(let offset) = $0.origin { offset } else { nil } } == [Int64(0), 1, 2, 5])
        #expect(book.instances[elsewhere] == nil)
    }

    @Test func aStartForADefinitionNotReadYetAsksForTheRegistryAndChangesNothingOnceRolledBack() throws {
        var book = try Self.book(registered: false)
        let id = Self.id(on: 1)
        let plan = book.plan([Self.start(id, offset: 0)], now: 1_000, refused: [:], dispatches: Dispatches())
        #expect(plan.missesWorkflows)
        #expect(plan.observed.deadLetters == [.unknownWorkflow])
        book.rollBack(plan)
        #expect(book.instances.count == 0)
    }

    @Test func aCommandTheBrokerRefusedFailsItsAttemptForGoodAndIsNotSentAgain() throws {
        var book = try Self.book()
        let id = Self.id(on: 1)
        let origin = RecordOrigin.command(id, step: "reserve", item: nil, attempt: 1, compensation: false)
        let plan = book.plan([Self.start(id, offset: 0)], now: 1_000, refused: [origin: "MESSAGE_TOO_LARGE"], dispatches: Dispatches())
        #expect(try Self.commands(plan).isEmpty)
        let state = try #require(book.instances[id])
        #expect(state.status == .failed, "the instance takes its failure path (nothing to compensate)")
        let snapshot = try #require(plan.outgoing.first { $0.origin == .snapshot(id) })
        #expect(try StateCodec.decode(snapshot.record.value ?? Data()).status == .failed, "what is written is the failed instance")
    }

    @Test func recordsOverTheSizeLimitAreLeftOutAndTheInstanceEndsWithASnapshotThatFits() throws {
        let limit = 2_000
        var book = try Self.book(maxRecordBytes: limit)
        let id = Self.id(on: 1)
        let big = JSON.string(String(repeating: "x", count: 3_000))
        let plan = book.plan([Self.start(id, offset: 0, input: ["blob": big])], now: 1_000, refused: [:], dispatches: Dispatches())
        #expect(plan.outgoing.allSatisfy { $0.size <= limit }, "\(plan.outgoing.map { ($0.origin, $0.size) })")
        #expect(try Self.commands(plan).isEmpty, "the command carries the input: it cannot be sent")
        #expect(book.instances[id]?.status == .failed)
        let snapshot = try #require(plan.outgoing.first { $0.origin == .snapshot(id) }, "the reduced snapshot is written")
        #expect(try StateCodec.decode(snapshot.record.value ?? Data()).status == .failed)
    }

    @Test func commandsGoToThePartitionOfTheirTopicThatTheCallerNames() throws {
        var book = try Self.book()
        let id = Self.id(on: 1)
        var plan = book.plan([Self.start(id, offset: 0)], now: 1_000, refused: [:], dispatches: Dispatches())
        book.prepareCommands(&plan) { topic in topic == Self.names.commands("inventory") ? 4 : nil }
        #expect(plan.outgoing.first { if case .command = $0.origin { true } else { false } }?.record.partition == 4)
    }
}

import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Synchronization
import Tracing

/// Starts workflows, registers definitions, reads instances and tasks, and sends decisions and operators'
/// commands, all through Kafka.
public final class BatonClient: Sendable {
    public let names: TopicNames
    package let client: KafkaClientConfiguration
    let producer: ResilientProducer
    let admin: KafkaAdmin
    package let logger: Logger
    let partitionCounts = Mutex<[String: Int]>([:])
    /// Signs decisions, operator actions and a person's signals: an operator's own key (it acts as that
    /// operator), or a server's key (it acts as whoever the caller names). Without one, such records cannot be
    /// sent from here: they go through `baton serve`, which signs them for the person who signed in.
    public let signer: AuthoritySigner?

    /// Holds starts while the coordinators are too far behind (`StartAdmissionSettings`).
    let admission: StartAdmission

    public init(
        client: KafkaClientConfiguration, names: TopicNames, signer: AuthoritySigner? = nil, admission: StartAdmissionSettings? = nil, logger: Logger
    ) throws {
        self.admission = StartAdmission(settings: try admission ?? .fromEnvironment(), names: names, client: client, logger: logger)
        self.client = client
        self.names = names
        self.signer = signer
        self.logger = logger
        var producerConfiguration = KafkaProducerConfiguration(client: client)
        producerConfiguration.linger = .milliseconds(1)
        producer = try ResilientProducer(configuration: producerConfiguration, logger: logger)
        admin = try KafkaAdmin(configuration: client, logger: logger)
    }

    public func close() async {
        await admission.close()
        await producer.close()
    }

    /// How often starts waited for the coordinators to catch up, and for how long (`StartAdmissionSettings`).
    public var startWaits: StartWaits { admission.waits }

    /// A record that acts for a person, made for the signer's identity (`principal`, or the one its key is
    /// bound to) and signed.
    func signed<R: AuthorityRecord>(as principal: Principal?, _ make: (String) -> R) throws -> R {
        guard let signer else {
            throw ClientError(
                .refused, "decisions, operator actions and a person's signals are signed: send them through the server (--server, BATON_SERVER), or give an operator's own key (BATON_SIGNING_KEY, `baton keys add-operator`)")
        }
        let identity: Principal
        do { identity = try signer.identity(for: principal) } catch { throw ClientError(.refused, "\(error)") }
        var record = make(identity.subject)
        do { try signer.sign(&record, as: identity, now: Self.now()) } catch { throw ClientError(.refused, "\(error)") }
        return record
    }

    /// A topic's partition count, asked of the brokers once: the engine's topics keep theirs. One answer of the
    /// brokers tells every topic's, so the next topics asked for cost nothing.
    package func partitionCount(_ topic: String) async throws -> Int {
        if let known = partitionCounts.withLock({ $0[topic] }) { return known }
        let topics = try await admin.metadata().topics
        partitionCounts.withLock { counts in
            for (name, t) in topics where t.error == nil && t.partitionCount > 0 { counts[name] = t.partitionCount }
        }
        guard let t = topics[topic], t.partitionCount > 0 else {
            throw KafkaError(code: .unknownTopicOrPartition, message: "topic \(topic) does not exist; run `baton topics apply` first")
        }
        return t.partitionCount
    }

    package static func now() -> Int64 { WallClock.millis() }

    /// A record's headers: its kind, and the caller's trace context (a request `baton serve` handles, a traced
    /// service), so that the coordinator's spans of the instance join the caller's trace.
    func headers(_ kind: Wire.Kind) -> [KafkaHeader] {
        var headers = Wire.headers(kind)
        if let context = ServiceContext.current { InstrumentationSystem.instrument.inject(context, into: &headers, using: KafkaHeadersInjector()) }
        return headers
    }

    /// Sends a record keyed by instance id to the instance's events partition; waits for the broker's
    /// acknowledgement unless `wait` is false (then `flush` does).
    func sendEvent(instanceID: String, kind: Wire.Kind, value: Data, partitions: Int? = nil, wait: Bool = true) async throws {
        let count: Int
        if let partitions { count = partitions } else { count = try await partitionCount(names.events) }
        let partition = KafkaPartitioner.partition(forKey: instanceID, partitionCount: count)
        if kind == .start { try await admission.admit(partition: partition, of: count) }
        let record = ProducerRecord(topic: names.events, partition: partition, key: Data(instanceID.utf8), value: value, headers: headers(kind))
        if wait { try await producer.send(record) } else { try await producer.enqueue(record) }
    }

    /// Sends an engine record to an instance's events partition (the one its key hashes to, or `partition`)
    /// and waits for the broker's acknowledgement.
    public func sendEvent<M: Encodable>(_ message: M, kind: Wire.Kind, instanceID: String, partition: Int32? = nil) async throws {
        if let partition {
            try await producer.send(
                ProducerRecord(topic: names.events, partition: partition, key: Data(instanceID.utf8), value: Wire.encode(message), headers: headers(kind)))
        } else {
            try await sendEvent(instanceID: instanceID, kind: kind, value: Wire.encode(message))
        }
    }

    /// Produces a record as it is and waits for the broker's acknowledgement (a dead letter sent again).
    @discardableResult
    public func produce(_ record: ProducerRecord) async throws -> DeliveryReport { try await producer.send(record) }

    /// Waits until everything sent without waiting is acknowledged.
    public func flush() async throws { try await producer.flush() }

    // MARK: Instances

    /// Sends a start and returns the instance's id, without waiting for a coordinator (`startAndWait` does).
    /// A start with the id of an existing instance changes nothing (one that asks for another workflow, version
    /// or input is refused by the coordinator).
    @discardableResult
    public func start(
        workflowID: String, version: Int? = nil, input: JSON, instanceID: String? = nil, partitions: Int? = nil, wait: Bool = true,
        requestID: String? = nil
    ) async throws -> String {
        let id = instanceID ?? UUID().uuidString.lowercased()
        try checkStart(instanceID: id, input: input)
        let message = StartMessage(instanceID: id, workflowID: workflowID, version: version, input: input, sentAt: Self.now(), requestID: requestID)
        try await sendEvent(instanceID: id, kind: .start, value: Wire.encode(message), partitions: partitions, wait: wait)
        return id
    }

    /// What became of a start.
    public enum StartOutcome: Sendable {
        /// This start created the instance.
        case created(InstanceState)
        /// The instance existed already, started with the same workflow, version and input: nothing changed.
        case exists(InstanceState)
        /// The instance exists, started with another workflow, version or input (shown): this start was refused.
        case conflict(InstanceState)

        public var state: InstanceState {
            switch self {
            case .created(let s), .exists(let s), .conflict(let s): s
            }
        }
    }

    /// Starts an instance and waits until a coordinator has it, then says whether this start created it, found
    /// it started with the same input already, or conflicts with how it was started. Concurrent starts of one
    /// id: one creates it; each of the others learns which start runs. Throws when no coordinator took the start
    /// within `timeout`. With `requireRegistered`, a workflow (or version) that is not registered is refused
    /// (`ClientError.Kind.notFound`) before anything is sent: its start would only reach the dead-letter topic.
    public func startAndWait(
        workflowID: String, version: Int? = nil, input: JSON, instanceID: String? = nil, timeout: Duration = .seconds(30),
        requireRegistered: Bool = false
    ) async throws -> StartOutcome {
        let id = instanceID ?? UUID().uuidString.lowercased()
        try checkStart(instanceID: id, input: input)
        func outcome(_ state: InstanceState, request: String?) -> StartOutcome {
            if let request, state.startRequest == request { return .created(state) }
            return state.isSameStart(workflowID: workflowID, version: version, input: input) ? .exists(state) : .conflict(state)
        }
        // Side by side: the definition and the instance's partition.
        async let registered = requireRegistered ? definition(workflowID, version: version) != nil : true
        let (current, end) = try await latestState(instanceID: id, withOutputs: false)
        guard try await registered else {
            let what = version.map { "version \($0) of '\(workflowID)' is not" } ?? "no workflow '\(workflowID)' is"
            throw ClientError(.notFound, "\(what) registered on \(names.definitions); register it first: baton definitions register FILE")
        }
        if let current { return outcome(current, request: nil) }
        let request = UUID().uuidString.lowercased()
        let message = StartMessage(instanceID: id, workflowID: workflowID, version: version, input: input, sentAt: Self.now(), requestID: request)
        try await sendEvent(instanceID: id, kind: .start, value: Wire.encode(message))
        var seen: InstanceState?
        try await follow(from: end, timeout: timeout) { m in
            guard m.keyString == id, let value = m.value, let state = try? StateCodec.decode(value) else { return false }
            seen = state
            return true
        }
        guard let seen else {
            throw ClientError(
                .notAppliedInTime, "sent the start of '\(id)' (request \(request)), but no coordinator took it within \(timeout): is one running? "
                    + "`baton status \(id)` shows whether it started since; a refused start is on \(names.deadletter)")
        }
        return outcome(seen, request: request)
    }

    /// Refuses before sending what a coordinator would refuse: a bad id, an input over the limit.
    func checkStart(instanceID: String, input: JSON) throws {
        do { try InstanceID.check(instanceID, field: "instance id") } catch { throw ClientError(.invalid, error.reason) }
        let size = input.encoded().count
        if size > Wire.maxInputBytes { throw ClientError(.invalid, "the input is \(size) bytes, more than the limit of \(Wire.maxInputBytes)") }
    }

    /// The instance's latest state with its outputs, read from its partitions of the state and outputs topics
    /// (nil when unknown).
    public func status(instanceID: String) async throws -> InstanceState? {
        try await latestState(instanceID: instanceID, withOutputs: true).state
    }

    /// The latest state (with its outputs put back, when asked), and where its state partition ended: whatever
    /// comes later is written after that offset.
    func latestState(instanceID: String, withOutputs: Bool = false) async throws -> (state: InstanceState?, end: TopicPartitionOffset) {
        let number = KafkaPartitioner.partition(forKey: instanceID, partitionCount: try await partitionCount(names.state))
        let partition = TopicPartition(names.state, number)
        let outputsPartition = TopicPartition(names.outputs, number)
        var state: InstanceState?
        var outputs: [String: OutputRecord] = [:]
        let prefix = "\(instanceID)/"
        let ends = try await readToEnd(withOutputs ? [partition, outputsPartition] : [partition]) { m in
            guard let key = m.keyString else { return }
            if m.topic == names.state {
                guard key == instanceID else { return }
                state = try m.value.map { try StateCodec.decode($0) }
            } else if key.hasPrefix(prefix) {
                outputs[key] = try m.value.map { try Wire.decode(OutputRecord.self, from: $0) }
            }
        }
        if withOutputs, var restored = state, let workflow = try await definition(restored.workflowID, version: restored.version) {
            let records = outputs.values.filter { $0.instanceID == instanceID }
            restored.restore(outputs: records.compactMap { r in workflow.index[r.step].map { StoredOutput(step: $0, item: r.item, attempt: r.attempt, output: r.output) } }, workflow: workflow)
            state = restored
        }
        return (state, TopicPartitionOffset(partition, offset: ends[partition] ?? TopicPartitionOffset.beginning))
    }

    /// Every instance's latest state, optionally only those with one of `statuses` or of one workflow,
    /// oldest first. Reads the whole state topic (statuses are read without decoding the rest).
    public func instances(statuses: Set<InstanceStatus>? = nil, workflowID: String? = nil) async throws -> [InstanceState] {
        var latest: [String: Data] = [:]
        try await readAll(names.state) { m in
            guard let id = m.keyString else { return }
            latest[id] = m.value
        }
        var found: [InstanceState] = []
        for value in latest.values {
            if let statuses {
                guard let status = StateCodec.status(value), statuses.contains(status) else { continue }
            }
            guard let state = try? StateCodec.decode(value) else { continue }
            if let workflowID, state.workflowID != workflowID { continue }
            found.append(state)
        }
        return found.sorted { ($0.startedAt, $0.instanceID) < ($1.startedAt, $1.instanceID) }
    }

    /// Cancel, resume, retry or skip; returns the request id (a request is applied once). It is sent as it
    /// is: `operateAndWait` checks it first and waits for the outcome.
    @discardableResult
    public func operate(
        instanceID: String, _ command: OperatorMessage.Command, step: String? = nil, output: JSON? = nil, reason: String? = nil, as principal: Principal? = nil
    ) async throws -> String {
        let message = try signed(as: principal) { by in
            OperatorMessage(instanceID: instanceID, command: command, step: step, output: output, reason: reason, by: by, requestID: UUID().uuidString.lowercased())
        }
        try await sendEvent(instanceID: instanceID, kind: .operatorCommand, value: Wire.encode(message))
        return message.requestID
    }

    /// Checks an operator's command against the instance as it is now, exactly as the coordinator will
    /// (the same pure transition), and refuses it with the reason when it would not apply: an unknown
    /// instance or step, an instance that is not suspended, one that has finished. Otherwise sends it and
    /// waits until the instance's state shows it applied, and returns that state.
    public func operateAndWait(
        instanceID: String, _ command: OperatorMessage.Command, step: String? = nil, output: JSON? = nil, reason: String? = nil, as principal: Principal? = nil,
        timeout: Duration = .seconds(30)
    ) async throws -> InstanceState {
        let message = try signed(as: principal) { by in
            OperatorMessage(instanceID: instanceID, command: command, step: step, output: output, reason: reason, by: by, requestID: UUID().uuidString.lowercased())
        }
        return try await sendCheckedAndWait(
            instanceID: instanceID, kind: .operatorCommand, value: Wire.encode(message), requestID: message.requestID, what: command.rawValue, timeout: timeout)
    }

    /// A signal: a service's (no signer and no principal: it names nobody), or a person's, signed.
    func signalMessage(instanceID: String, name: String, data: JSON?, as principal: Principal?) throws -> SignalMessage {
        let make = { (by: String?) in SignalMessage(instanceID: instanceID, name: name, data: data, by: by, requestID: UUID().uuidString.lowercased(), sentAt: Self.now()) }
        if principal == nil, signer == nil { return make(nil) }
        return try signed(as: principal) { make($0) }
    }

    /// Sends a signal (named data) to an instance; returns the request id. Sent as it is: `signalAndWait`
    /// checks it first and waits until it is applied. With a signer (or `principal`), it is the person's, signed.
    @discardableResult
    public func signal(instanceID: String, name: String, data: JSON? = nil, as principal: Principal? = nil) async throws -> String {
        let message = try signalMessage(instanceID: instanceID, name: name, data: data, as: principal)
        try await sendEvent(instanceID: instanceID, kind: .signal, value: Wire.encode(message))
        return message.requestID
    }

    /// Checks a signal against the instance as the coordinator will (an unknown name, a finished instance are
    /// refused with the reason), sends it, and waits until the instance's state shows it applied.
    public func signalAndWait(instanceID: String, name: String, data: JSON? = nil, as principal: Principal? = nil, timeout: Duration = .seconds(30)) async throws -> InstanceState {
        let message = try signalMessage(instanceID: instanceID, name: name, data: data, as: principal)
        return try await sendCheckedAndWait(
            instanceID: instanceID, kind: .signal, value: Wire.encode(message), requestID: message.requestID, what: "signal '\(name)'", timeout: timeout)
    }

    /// Checks an event with a request id against the instance as it is now (the coordinator's own transition),
    /// sends it, and waits until a snapshot lists the request as applied.
    func sendCheckedAndWait(instanceID: String, kind: Wire.Kind, value: Data, requestID: String, what: String, timeout: Duration) async throws -> InstanceState {
        let (current, end) = try await latestState(instanceID: instanceID)
        guard let state = current else { throw ClientError(.notFound, "no instance '\(instanceID)' (nothing on \(names.state))") }
        guard let workflow = try await definition(state.workflowID, version: state.version) else {
            throw ClientError(.notFound, "instance '\(instanceID)' runs \(state.workflowID) v\(state.version), which is not on \(names.definitions)")
        }
        guard case .event(_, let event) = try EventMessage.decode(value) else { throw ClientError(.invalid, "\(what): not an instance event") }
        if case .ignored(let why) = Saga.apply(workflow, to: state, event: event, now: Self.now()).outcome {
            throw ClientError(.refused, "\(what) refused for '\(instanceID)' (\(state.status.rawValue)): \(why)")
        }
        try await sendEvent(instanceID: instanceID, kind: kind, value: value)
        var applied: InstanceState?
        try await follow(from: end, timeout: timeout) { m in
            guard m.keyString == instanceID, let value = m.value, let state = try? StateCodec.decode(value), state.requests.contains(requestID) else {
                return false
            }
            applied = state
            return true
        }
        guard let applied else {
            throw ClientError(
                .notAppliedInTime, "sent \(what) to '\(instanceID)' (request \(requestID)), but no coordinator applied it within \(timeout): "
                    + "is one running? `baton status \(instanceID)` shows whether it was applied since")
        }
        return applied
    }

    // MARK: Definitions

    /// Checks a definition and registers it. A version is immutable and first-wins: registering the same
    /// version with another content throws `DefinitionConflict` (naming what is registered); registering it
    /// again unchanged does nothing. `registration` says which of the two happened.
    @discardableResult
    public func register(document: Data, source: String? = nil) async throws -> Workflow {
        try await registration(document: document, source: source).workflow
    }

    /// A registered definition (the latest version when nil), as every reader decides it (`DefinitionLog`).
    public func definition(_ workflowID: String, version: Int?) async throws -> Workflow? {
        var log = DefinitionLog()
        let partitions: [TopicPartition]
        if let version {
            let count = try await partitionCount(names.definitions)
            partitions = [TopicPartition(names.definitions, DefinitionLog.partition(workflowID: workflowID, version: version, partitionCount: count))]
        } else {
            partitions = (0..<Int32(try await partitionCount(names.definitions))).map { TopicPartition(names.definitions, $0) }
        }
        // Every reader skips a record it cannot read (the rule is over readable records).
        try await readToEnd(partitions) { m in _ = try? log.apply(key: m.keyString, value: m.value) }
        guard let entry = version.map({ log.winner(workflowID, $0) }) ?? log.latest(workflowID) else { return nil }
        return try DefinitionLoader.load(Data(entry.record.document.utf8), source: DefinitionRecord.key(entry.record.workflowID, entry.record.version))
    }

    // MARK: Tasks

    /// Every task's latest record; `open` ones wait for a decision.
    public func tasks() async throws -> [TaskRecord] {
        try await readTasks().records
    }

    /// The tasks, and where each partition of the tasks topic ended.
    func readTasks() async throws -> (records: [TaskRecord], ends: [TopicPartition: Int64]) {
        var latest: [String: TaskRecord] = [:]
        var opened: [String: HumanTask] = [:]
        let ends = try await readAll(names.tasks) { m in
            guard let value = m.value, var record = try? Wire.decode(TaskRecord.self, from: value) else { return }
            if let task = record.task { opened[record.taskID] = task } else { record.task = opened[record.taskID] }
            latest[record.taskID] = record
        }
        return (latest.values.sorted { $0.at < $1.at }, ends)
    }

    /// Approves or rejects an open task. Only a decision on the task's current attempt counts.
    public func decide(taskID: String, approve: Bool, as principal: Principal? = nil, comment: String?) async throws {
        _ = try await sendDecision(taskID: taskID, approve: approve, as: principal, comment: comment)
    }

    /// Sends the decision on an open task; returns where the task's partition of the tasks topic ended
    /// before it, so that its closing record comes after.
    func sendDecision(taskID: String, approve: Bool, as principal: Principal?, comment: String?) async throws -> TopicPartitionOffset {
        let (records, ends) = try await readTasks()
        guard let record = records.first(where: { $0.taskID == taskID }) else { throw ClientError(.notFound, "no task '\(taskID)'") }
        guard record.status == .open, let task = record.task else { throw ClientError(.refused, "task '\(taskID)' is \(record.status.rawValue), not open") }
        let message = try signed(as: principal) { by in
            DecisionMessage(instanceID: task.instanceID, taskID: taskID, step: task.step, attempt: task.attempt, approved: approve, by: by, comment: comment)
        }
        try await producer.send(
            ProducerRecord(topic: names.events, partition: record.partition, key: Data(task.instanceID.utf8), value: Wire.encode(message), headers: headers(.taskDecided)))
        let partition = TopicPartition(names.tasks, KafkaPartitioner.partition(forKey: taskID, partitionCount: try await partitionCount(names.tasks)))
        return TopicPartitionOffset(partition, offset: ends[partition] ?? TopicPartitionOffset.beginning)
    }

    /// `decide`, then waits until a coordinator has closed the task, and returns its closing record: its
    /// status is the decision, or how the task was closed first (for example `timed_out`).
    public func decideAndWait(taskID: String, approve: Bool, as principal: Principal? = nil, comment: String?, timeout: Duration = .seconds(30)) async throws -> TaskRecord {
        let end = try await sendDecision(taskID: taskID, approve: approve, as: principal, comment: comment)
        var closed: TaskRecord?
        try await follow(from: end, timeout: timeout) { m in
            guard m.keyString == taskID, let value = m.value, let record = try? Wire.decode(TaskRecord.self, from: value), record.status != .open else {
                return false
            }
            closed = record
            return true
        }
        guard let closed else {
            throw ClientError(.notAppliedInTime, "sent the decision on task '\(taskID)', but no coordinator applied it within \(timeout): is one running?")
        }
        return closed
    }

    // MARK: Reading

    /// Reads every partition of a topic from the beginning to its current end, read_committed; returns the
    /// offset each partition ended at.
    @discardableResult
    public func readAll(_ topic: String, timeout: Duration = .seconds(60), _ body: (KafkaMessage) throws -> Void) async throws -> [TopicPartition: Int64] {
        let count = try await partitionCount(topic)
        return try await readToEnd((0..<Int32(count)).map { TopicPartition(topic, $0) }, timeout: timeout, body)
    }

    /// Reads a partition from `start` until `body` returns true (then returns) or `timeout` passes (then
    /// returns too: the caller tells which from what `body` saw).
    func follow(from start: TopicPartitionOffset, timeout: Duration, _ body: (KafkaMessage) throws -> Bool) async throws {
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: client, groupID: nil), logger: logger)
        do {
            try consumer.assign([start])
            let clock = ContinuousClock()
            let deadline = clock.now + timeout
            reading: while clock.now < deadline {
                for event in try await consumer.poll(maxEvents: 5000, timeout: .milliseconds(100)) {
                    if case .message(let m) = event, try body(m) { break reading }
                }
            }
        } catch {
            await consumer.close()
            throw error
        }
        await consumer.close()
    }

    /// Reads partitions from the beginning to their current end (partition EOF), read_committed; returns the
    /// offset each partition ended at.
    @discardableResult
    public func readToEnd(
        _ partitions: [TopicPartition], timeout: Duration = .seconds(60), _ body: (KafkaMessage) throws -> Void
    ) async throws -> [TopicPartition: Int64] {
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        try consumer.assign(partitions.map { TopicPartitionOffset($0, offset: TopicPartitionOffset.beginning) })
        var remaining = Set(partitions)
        var ends: [TopicPartition: Int64] = [:]
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while !remaining.isEmpty {
            guard clock.now < deadline else {
                await consumer.close()
                throw ClientError(.unavailable, "reading \(partitions.first?.topic ?? "") did not reach its end within \(timeout)")
            }
            for event in try await consumer.poll(maxEvents: 5000, timeout: .milliseconds(100)) {
                switch event {
                case .message(let m): try body(m)
                case .partitionEOF(let tp, let offset):
                    remaining.remove(tp)
                    ends[tp] = offset
                default: break
                }
            }
        }
        await consumer.close()
        return ends
    }
}

/// Why the client could not do what it was asked, by kind (what a caller decides on) and in words (what a person
/// reads). The server answers each kind with one HTTP status and the command line exits with one status per kind
/// (docs/api.md, "Errors and exit codes").
public struct ClientError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        /// The request itself is wrong (an id, an input, a name): sending it again will not help.
        case invalid
        /// What it names does not exist: the instance, task, topic or definition.
        case notFound = "not-found"
        /// It clashes with what exists (an instance with this id and another input).
        case conflict
        /// The engine or the signer refuses it as things stand (the instance's status, the task's, the key's).
        case refused
        /// It was sent, but no coordinator applied it in time: it may still be; look before sending again.
        case notAppliedInTime = "not-applied"
        /// The brokers did not answer (or not in time): try again.
        case unavailable
    }

    public var kind: Kind
    public var description: String
    /// Refused for load, not for what it asked (a start held for busy coordinators): sending the same again after
    /// this is right. `baton serve` answers it as `Retry-After`.
    public var retryAfter: Duration?
    public init(_ kind: Kind, _ description: String, retryAfter: Duration? = nil) {
        self.kind = kind
        self.description = description
        self.retryAfter = retryAfter
    }

    /// The status `baton` exits with (`Kind.exitCode`).
    public var exitCode: Int32 { kind.exitCode }
    /// The HTTP status `baton serve` answers with (`Kind.httpStatus`).
    public var httpStatus: Int { kind.httpStatus }
}

extension ClientError.Kind {
    /// The status `baton` exits with for this kind (1 stays "failed" in general; 2 is `baton watch`'s "suspended").
    public var exitCode: Int32 {
        switch self {
        case .conflict: 3
        case .notFound: 4
        case .refused: 5
        case .notAppliedInTime: 6
        case .invalid: 64  // EX_USAGE, as for options the command line refuses
        case .unavailable: 69  // EX_UNAVAILABLE
        }
    }

    /// The HTTP status `baton serve` answers for this kind, when a route's client call fails. (Its own writes that
    /// were sent but not applied in time answer 202 with the instance; a client call that could not confirm its
    /// write is a 503: the caller looks before sending again.)
    public var httpStatus: Int {
        switch self {
        case .invalid: 400
        case .notFound: 404
        case .conflict, .refused: 409
        case .notAppliedInTime, .unavailable: 503
        }
    }

    /// The problem type `baton serve` answers for this kind (docs/api.md, "Errors").
    public var problemType: ProblemCode {
        switch self {
        case .invalid: .badRequest
        case .notFound: .notFound
        case .conflict, .refused: .conflict
        case .notAppliedInTime, .unavailable: .unavailable
        }
    }
}

/// The stable names of the problems `baton serve` answers (`type` is `https://baton.dev/problems/<code>`;
/// docs/api.md, "Errors"). A client branches on these, never on the text of `detail`.
public enum ProblemCode: String, Sendable, CaseIterable {
    /// The request is malformed: a parameter, a field or the HTTP itself.
    case badRequest = "bad-request"
    case unauthorized
    /// Authenticated, but not allowed (the task's role, operator, admin).
    case forbidden
    case notFound = "not-found"
    case methodNotAllowed = "method-not-allowed"
    /// The id exists with something else, or the change does not fit the current state.
    case conflict
    case tooLarge = "too-large"
    case unsupportedMediaType = "unsupported-media-type"
    /// The request names a workflow (or an instance runs one) that is not registered.
    case unknownWorkflow = "unknown-workflow"
    case invalidDefinition = "invalid-definition"
    /// The brokers or the read model cannot answer now, or the change was not applied in time: try again.
    case unavailable
    case tooManyConnections = "too-many-connections"
    /// The request's head or body did not arrive in time.
    case timeout
    case uriTooLong = "uri-too-long"
    case headerTooLarge = "header-too-large"
    /// The server could not sign the record it was asked to write.
    case signing
    /// Another HTTP error of the server's framework.
    case http
    case `internal`

    /// The problem's `type` URI.
    public var uri: String { "https://baton.dev/problems/\(rawValue)" }
}

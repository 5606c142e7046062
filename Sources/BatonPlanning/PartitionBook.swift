import BatonCore
import BatonRecords
import BatonWire
import Foundation
import Logging
import Tracing

/// What the plan of a partition's batches depends on besides its instances: where its records go, what the
/// broker takes, who may send what, and the registered definitions.
public struct PlanningRules: Sendable {
    public var partition: Int32
    /// The partitions of the events topic (where instances and mailboxes live, by murmur2 of their key).
    public var partitionCount: Int
    public var names: TopicNames
    /// Who writes (the `baton-coordinator` header of snapshots).
    public var identity: String
    public var settings: SagaSettings
    public var security: CoordinatorSecurity
    /// The largest record the broker takes (with headers and a batch's overhead).
    public var maxRecordBytes: Int
    public var logger: Logger
    public var tracer: (any Tracer)?
    /// The registered definitions: a definition by id and version (nil: the newest).
    public var definitions: @Sendable (_ id: String, _ version: Int?) -> Workflow?

    public init(
        partition: Int32, partitionCount: Int, names: TopicNames, identity: String, settings: SagaSettings, security: CoordinatorSecurity,
        maxRecordBytes: Int, logger: Logger, tracer: (any Tracer)?, definitions: @escaping @Sendable (_ id: String, _ version: Int?) -> Workflow?
    ) {
        self.partition = partition
        self.partitionCount = partitionCount
        self.names = names
        self.identity = identity
        self.settings = settings
        self.security = security
        self.maxRecordBytes = maxRecordBytes
        self.logger = logger
        self.tracer = tracer
        self.definitions = definitions
    }

    func workflow(_ id: String, version: Int?) -> Workflow? { definitions(id, version) }
}

/// What an owned events partition holds (its instances and mailboxes) and how a batch of events changes it,
/// with no I/O: decoding, routing, checking who sent what, `Saga.apply`, the size limit and the records the
/// broker refused, and the records to write. The coordinator writes the plan in a transaction, then settles
/// what it changed or rolls it back.
public struct PartitionBook: Sendable {
    public let rules: PlanningRules
    public var instances: InstanceStore
    /// The mailboxes whose key is on this partition: records from business topics and the attempts waiting for them.
    public var mailboxes: [String: Mailbox]

    public init(rules: PlanningRules, instances: InstanceStore = InstanceStore(), mailboxes: [String: Mailbox] = [:]) {
        self.rules = rules
        self.instances = instances
        self.mailboxes = mailboxes
    }

    var partition: Int32 { rules.partition }
    var partitionCount: Int { rules.partitionCount }
    var names: TopicNames { rules.names }
    var logger: Logger { rules.logger }

    // MARK: A batch

    /// Applies a batch of events and gathers what it writes. Records the broker refused in an earlier try of the
    /// same batch (`refused`) are left out, and their instances go on without them (`goOnWithout`); a record over
    /// the size limit is treated the same way before it is sent. What it changed stays changed until
    /// `rollBack(_:)`.
    public mutating func plan(_ messages: [KafkaMessage], now: Timestamp, refused: [RecordOrigin: String], dispatches: Dispatches) -> BatchPlan {
        var plan = BatchPlan(now: now, refused: refused, dispatches: dispatches, tracer: rules.tracer)
        for m in messages { apply(m, to: &plan) }
        plan.outgoing = outgoingRecords(&plan, committedOffset: messages.last.map { String($0.offset + 1) } ?? "")
        return plan
    }

    /// Undoes what `plan` changed: the instances and mailboxes are as they were before it.
    public mutating func rollBack(_ plan: BatchPlan) {
        for (id, original) in plan.originals {
            instances[id] = original
            instances.settle(id)
        }
        for (key, original) in plan.mailboxOriginals { mailboxes[key] = original }
        settleThawed(plan)
    }

    /// Keeps encoded again the waiting instances the batch decoded.
    public mutating func settleThawed(_ plan: BatchPlan) {
        for id in plan.thawed { instances.settle(id) }
    }

    /// Applies one event to the instance or mailbox it is for, or dead-letters it.
    mutating func apply(_ m: KafkaMessage, to plan: inout BatchPlan) {
        guard let value = m.value else { return deadLetter(m, .unreadable, "a record without a value", &plan) }
        let record: DecodedEvent
        do { record = try EventMessage.decodeRecord(value) } catch { return deadLetter(m, .unreadable, error.reason, &plan) }
        switch record.message {
        case .mailbox(let key, let event): applyMailbox(m, key: key, event, &plan)
        case .start(let start): applyStart(m, start, &plan)
        case .event(let id, let event): applyEvent(m, id: id, event, credentials: record.credentials, &plan)
        }
    }

    mutating func deadLetter(_ m: KafkaMessage, _ why: DeadLetterReason, _ reason: String, _ plan: inout BatchPlan) {
        logger.warning("dead letter", metadata: ["offset": "\(m.partition)/\(m.offset)", "reason": "\(reason)"])
        plan.deadLetters.append(OutgoingRecord(record: deadLetterRecord(m, code: why, reason: reason, topic: names.deadletter), origin: .deadLetter(offset: m.offset)))
        plan.observed.deadLetters.append(why)
    }

    /// Records an applied transition: the instance's new state (its original kept for a rollback), its effects,
    /// what the metrics count.
    mutating func record(_ id: String, _ transition: Transition, workflow: Workflow, event: SagaEvent?, _ plan: inout BatchPlan) {
        let before = instances[id]
        if plan.originals[id] == nil { plan.originals[id] = .some(before) }
        instances[id] = transition.state
        plan.effects[id, default: []] += transition.effects
        plan.observed.applied(workflow, event: event, before: before, after: transition.state, effects: transition.effects, dispatches: plan.dispatches, now: plan.now)
    }

    /// A record delivered to an instance that cannot take it goes back to its mailbox (for another attempt).
    /// Whether `event` was such a delivery.
    mutating func giveBack(_ event: SagaEvent, instance id: String, _ why: String, _ plan: inout BatchPlan) -> Bool {
        guard case .eventReceived(_, _, let mailbox, let record) = event else { return false }
        logger.debug("a delivered record goes back to its mailbox", metadata: ["instance": "\(id)", "mailbox": "\(mailbox)", "reason": "\(why)"])
        let message = MailboxRecordMessage(kind: .eventReturned, mailbox: mailbox, event: record)
        plan.returned.append(
            OutgoingRecord(
                record: ProducerRecord(
                    topic: names.events, partition: KafkaPartitioner.partition(forKey: mailbox, partitionCount: partitionCount), key: Data(mailbox.utf8),
                    value: Wire.encode(message), headers: Wire.headers(.eventReturned)),
                origin: .mailbox(mailbox)))
        plan.observed.ignored += 1
        return true
    }

    mutating func applyMailbox(_ m: KafkaMessage, key: String, _ event: MailboxEvent, _ plan: inout BatchPlan) {
        let home = KafkaPartitioner.partition(forKey: key, partitionCount: partitionCount)
        guard home == partition else {
            return deadLetter(m, .wrongPartition, "mailbox \(key) belongs on partition \(home) (murmur2 of its key), not \(partition)", &plan)
        }
        let before = mailboxes[key]
        let transition = Mailbox.apply(before ?? Mailbox(key: key), event, now: plan.now)
        if case .ignored(let why) = transition.outcome {
            logger.debug("mailbox event ignored", metadata: ["mailbox": "\(key)", "reason": "\(why)"])
            plan.observed.ignored += 1
            return
        }
        plan.observed.applied += 1
        if plan.mailboxOriginals[key] == nil { plan.mailboxOriginals[key] = .some(before) }
        mailboxes[key] = transition.mailbox.isEmpty ? nil : transition.mailbox
        plan.mailboxEffects[key, default: []] += transition.effects
    }

    /// A start: a new instance, unless the id exists (the same start again changes nothing; another is a conflict).
    mutating func applyStart(_ m: KafkaMessage, _ start: StartMessage, _ plan: inout BatchPlan) {
        let id = start.instanceID
        let home = KafkaPartitioner.partition(forKey: id, partitionCount: partitionCount)
        guard home == partition else {
            return deadLetter(m, .wrongPartition, "instance \(id) belongs on partition \(home) (murmur2 of its key), not \(partition)", &plan)
        }
        if let existing = instances[id] {
            if existing.isSameStart(workflowID: start.workflowID, version: start.version, input: start.input) {
                logger.debug("duplicate start ignored", metadata: ["instance": "\(id)", "request": "\(start.requestID ?? "")"])
                plan.observed.ignored += 1
            } else {
                deadLetter(
                    m, .conflict,
                    "conflict: instance '\(id)' exists already (\(existing.workflowID) v\(existing.version), \(existing.status.rawValue)) and was started with another workflow, version or input; this start (request \(start.requestID ?? "none")) was refused",
                    &plan)
            }
            return
        }
        guard let workflow = rules.workflow(start.workflowID, version: start.version) else {
            // Registered a moment ago, perhaps: the coordinator reads the registry and plans the batch again.
            plan.missesWorkflows = true
            return deadLetter(m, .unknownWorkflow, "unknown workflow '\(start.workflowID)'\(start.version.map { " version \($0)" } ?? ""): register it first", &plan)
        }
        var transition = Saga.start(workflow, instanceID: id, input: start.input, now: plan.now, request: start.requestID, settings: rules.settings)
        if let tracer = plan.tracing.tracer, let span = plan.tracing.start(m, "start \(workflow.id)", instance: id, stored: nil) {
            span.attributes["baton.workflow"] = workflow.id
            // The instance's trace: every step of it joins this one, however long it runs.
            transition.state.trace = tracer.carrier(of: span.context)
        } else if let passOn = plan.tracing.unsampled[id] {
            // Started in a trace its sender does not sample: the instance stays out of it.
            transition.state.trace = Dictionary(passOn.compactMap { h in h.value.map { (h.key, String(decoding: $0, as: UTF8.self)) } }) { a, _ in a }
        }
        record(id, transition, workflow: workflow, event: nil, &plan)
    }

    /// An event for an instance: checked (its instance, definition, step, sender), then applied.
    mutating func applyEvent(_ m: KafkaMessage, id: String, _ event: SagaEvent, credentials: Credentials, _ plan: inout BatchPlan) {
        instances.thaw(id)
        plan.thawed.append(id)
        guard let state = instances[id] else {
            if giveBack(event, instance: id, "unknown instance", &plan) { return }
            return deadLetter(m, .unknownInstance, "unknown instance '\(id)' on \(m.topic)[\(m.partition)]", &plan)
        }
        guard let workflow = rules.workflow(state.workflowID, version: state.version) else {
            return deadLetter(m, .unknownWorkflow, "the definition \(state.workflowID)@\(state.version) of instance '\(id)' is not registered", &plan)
        }
        if let step = event.step, workflow.index[step] == nil {
            return deadLetter(m, .unknownStep, "instance '\(id)': no step '\(step)' in \(workflow.id) v\(workflow.version)", &plan)
        }
        if case .timerFired(let key, let dueAt?) = event {
            plan.firingsBack.append(TimerEntry(dueAt: dueAt, instanceID: id, key: key))
            // A coordinator fires a timer when its clock has reached the due time, and the record carries that
            // clock's time (CreateTime), whatever the clocks of others say. A firing written earlier than the time it
            // is for was not written by a coordinator that fired it: it changes nothing, however late it is read
            // (behind a takeover, when the timer looks due).
            if let written = m.timestamp, written < dueAt {
                logger.warning(
                    "ignored a timer firing written before the time it is for (not a coordinator's firing: forged, or its writer's clock is wrong)",
                    metadata: ["instance": "\(id)", "timer": "\(key)", "due_at": "\(dueAt)", "written_at": "\(written)", "offset": "\(m.partition)/\(m.offset)"])
                plan.observed.ignored += 1
                return
            }
        }
        // Who sent it, and may they: a signed person with the right role, a worker with its command's token.
        if let refusal = rules.security.admit(credentials, event, instanceID: id, state: state, workflow: workflow, appendedAt: m.timestamp ?? plan.now) {
            return deadLetter(m, DeadLetterReason(refusal.code), "refused: \(refusal)", &plan)
        }
        let span = plan.tracing.start(m, event.spanName(workflow), instance: id, stored: state.trace)
        if let span {
            span.attributes["baton.workflow"] = workflow.id
            if let step = event.step { span.attributes["baton.step"] = step }
        }
        let transition = Saga.apply(workflow, to: state, event: event, now: plan.now, writtenAt: m.timestamp, settings: rules.settings)
        // A delivered record the attempt cannot take goes back to its mailbox, whatever the reason.
        if case .ignored(let reason) = transition.outcome, giveBack(event, instance: id, "\(reason)", &plan) { return }
        switch transition.outcome {
        case .ignored(.unknown(let what)):
            // About a step or attempt the instance does not have: the sender is broken; keep it for a person.
            deadLetter(m, .unknownStep, "instance '\(id)': \(what)", &plan)
            span?.setStatus(SpanStatus(code: .error, message: "dead-lettered: \(what)"))
        case .ignored(let reason):
            // Duplicates, superseded attempts, commands that do not fit the status: expected, and harmless.
            logger.debug("event ignored", metadata: ["instance": "\(id)", "reason": "\(reason)"])
            span?.attributes["baton.ignored"] = "\(reason)"
            plan.observed.ignored += 1
        case .applied:
            record(id, transition, workflow: workflow, event: event, &plan)
        }
    }

    // MARK: The records of a batch

    /// Everything the batch writes: each changed instance's records (checked against the broker's limit), the dead
    /// letters, the records going back to mailboxes, and the changed mailboxes' records.
    mutating func outgoingRecords(_ plan: inout BatchPlan, committedOffset: String) -> [OutgoingRecord] {
        var outgoing: [OutgoingRecord] = []
        for id in plan.originals.keys.sorted() {
            let (records, purge) = fittedRecords(for: id, &plan, committedOffset: committedOffset)
            outgoing += records
            if purge { plan.purged.insert(id) }
        }
        outgoing += plan.deadLetters
        outgoing += plan.returned
        outgoing += mailboxRecords(plan.mailboxOriginals.keys.sorted(), effects: plan.mailboxEffects, eventsOffset: committedOffset, refused: plan.refused)
        return outgoing
    }

    /// An instance's records, checked against the broker's limit and the records it refused; an instance with a
    /// record that cannot be written goes on without it (`goOnWithout`), its snapshot reduced if that is what does
    /// not fit. Whether the instance is purged.
    mutating func fittedRecords(for id: String, _ plan: inout BatchPlan, committedOffset: String) -> (records: [OutgoingRecord], purge: Bool) {
        var instanceEffects = plan.effects[id] ?? []
        var dropped = Set<RecordOrigin>()
        var records: [OutgoingRecord] = []
        let limit = rules.maxRecordBytes
        for round in 0..<6 {
            records = self.records(for: id, effects: instanceEffects, original: plan.originals[id] ?? nil, now: plan.now, eventsOffset: committedOffset)
                .filter { !dropped.contains($0.origin) }
            let bad = records.compactMap { r -> (RecordOrigin, String)? in
                if let why = plan.refused[r.origin] { return (r.origin, why) }
                let size = r.size
                return size > limit ? (r.origin, "\(size) bytes, more than the limit of \(limit)") : nil
            }
            guard let (origin, why) = bad.first else { break }
            if round == 5 {
                // Not even the reduced snapshot fits: write nothing of the instance rather than stop the partition.
                logger.critical("an instance's records cannot be written even reduced; they are left out", metadata: ["instance": "\(id)", "record": "\(origin)", "reason": "\(why)"])
                records.removeAll { r in plan.refused[r.origin] != nil || r.size > limit }
                break
            }
            // A snapshot that cannot be written is replaced by the reduced one of the abandoned instance.
            if case .snapshot = origin {} else { dropped.insert(origin) }
            instanceEffects += goOnWithout(origin, why: why, instanceID: id, now: plan.now, escalate: round >= 3)
        }
        return (records, instanceEffects.contains(.purge))
    }

    // MARK: The records of an instance

    /// An instance one of whose records cannot be written: the effects that let it go on without it. A command
    /// that cannot be sent fails its attempt for good (the failure path runs: compensations, alert); a
    /// compensation's fails that compensation attempt (it is retried, then the instance is suspended with a
    /// critical alert); an alert or notification is dropped. Anything else (the snapshot, an output, a task), or
    /// an instance that keeps producing records that cannot be written (`escalate`), ends the instance at once
    /// as failed, with a snapshot reduced to fit.
    mutating func goOnWithout(_ origin: RecordOrigin, why: String, instanceID id: String, now: Timestamp, escalate: Bool) -> [SagaEffect] {
        logger.error("a record cannot be written; its instance goes on without it", metadata: ["instance": "\(id)", "record": "\(origin)", "reason": "\(why)"])
        guard let state = instances[id], let workflow = rules.workflow(state.workflowID, version: state.version) else { return [] }
        var event: SagaEvent?
        switch origin {
        case .command(_, let step, let item, let attempt, let compensation) where !escalate:
            let error = "\(origin) cannot be written: \(why)"
            event = compensation
                ? .compensationFailed(step: step, item: item, attempt: attempt, error: error)
                : .stepFailed(step: step, item: item, attempt: attempt, error: error, retryable: false)
        case .alert, .notification, .deadLetter, .tombstone, .mailbox:
            return []
        case .subscription:
            // The attempt waits without its subscription: it times out and takes its failure path.
            return []
        default:
            break
        }
        if let event {
            let transition = Saga.apply(workflow, to: state, event: event, now: now, settings: rules.settings)
            if case .applied = transition.outcome {
                instances[id] = transition.state
                return transition.effects
            }
        }
        let reason = "stopped by the coordinator: \(origin) cannot be written (\(why))"
        let transition = Saga.abandon(workflow, state, reason: reason, now: now, settings: rules.settings)
        instances[id] = transition.state.minimized
        return transition.effects
    }

    /// The records an instance's changes in this batch become: its snapshot (or tombstones, when purged), the
    /// outputs added since `original`, and one record for each effect that writes one.
    func records(for id: String, effects: [SagaEffect], original: InstanceState?, now: Timestamp, eventsOffset: String) -> [OutgoingRecord] {
        let key = Data(id.utf8)
        let stateHeaders = [KafkaHeader(key: WireHeaders.eventsOffset, string: eventsOffset), KafkaHeader(key: WireHeaders.coordinator, string: rules.identity)]
        var out: [OutgoingRecord] = []
        guard let state = instances[id] else { return [] }
        let workflow = rules.workflow(state.workflowID, version: state.version)
        if effects.contains(.purge) {
            // Everything stored for the instance goes: its snapshot, its outputs, its tasks.
            let source = original ?? state
            out.append(OutgoingRecord(record: ProducerRecord(topic: names.state, partition: partition, key: key, value: nil, headers: stateHeaders), origin: .tombstone(id)))
            for o in source.storedOutputs {
                let step = workflow.map { $0.steps[o.step].id } ?? String(o.step)
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(
                            topic: names.outputs, partition: partition, key: Data(OutputRecord.key(instanceID: id, step: step, item: o.item).utf8), value: nil, headers: stateHeaders),
                        origin: .tombstone(id)))
            }
            if let workflow {
                for (s, step) in workflow.steps.enumerated() where step.isHumanTask {
                    for attempt in stride(from: 1, through: source.steps[s].units.map(\.attempt).max() ?? 0, by: 1) {
                        let taskID = "\(id)/\(step.id)/\(attempt)"
                        out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(taskID.utf8), value: nil), origin: .tombstone(id)))
                    }
                }
            }
            return out
        }
        out.append(
            OutgoingRecord(
                record: ProducerRecord(topic: names.state, partition: partition, key: key, value: StateCodec.encodeSnapshot(state), headers: stateHeaders),
                origin: .snapshot(id)))
        for o in state.outputsAdded(since: original) {
            let step = workflow.map { $0.steps[o.step].id } ?? String(o.step)
            let record = OutputRecord(instanceID: id, step: step, item: o.item, attempt: o.attempt, output: o.output)
            out.append(
                OutgoingRecord(
                    record: ProducerRecord(topic: names.outputs, partition: partition, key: Data(record.key.utf8), value: Wire.encode(record), headers: stateHeaders + Wire.headers(.output)),
                    origin: .output(id, step: step, item: o.item)))
        }
        for effect in effects {
            switch effect {
            case .dispatch(let command), .compensate(let command):
                let message = CommandMessage(command, replyTo: ReplyTo(topic: names.events, partition: partition), token: rules.security.token(for: command))
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(topic: names.commands(command.pool), key: key, value: Wire.encode(message), headers: Wire.headers(message.kind)),
                        origin: .command(id, step: command.step, item: command.item, attempt: command.attempt, compensation: command.isCompensation)))
            case .createTask(let task), .updateTask(let task):
                let r = TaskRecord(taskID: task.taskID, status: .open, task: task, decidedBy: nil, partition: partition, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(task.taskID.utf8), value: Wire.encode(r), headers: Wire.headers(.task)), origin: .task(id, taskID: task.taskID)))
            case .closeTask(let task, let resolution, let by):
                let r = TaskRecord(taskID: task.taskID, status: TaskRecord.Status(resolution), task: task, decidedBy: by, partition: partition, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.tasks, key: Data(task.taskID.utf8), value: Wire.encode(r), headers: Wire.headers(.task)), origin: .task(id, taskID: task.taskID)))
            case .notify(let notification):
                let r = NotificationRecord(notification: notification, at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.notifications, key: key, value: Wire.encode(r), headers: Wire.headers(.notification)), origin: .notification(id)))
            case .alert(let alert):
                let r = AlertRecord(alert: AlertMessage(alert), at: now)
                out.append(OutgoingRecord(record: ProducerRecord(topic: names.alerts, key: key, value: Wire.encode(r), headers: Wire.headers(.alert)), origin: .alert(id)))
            case .subscribe(let subscription), .unsubscribe(let subscription):
                let kind: Wire.Kind = if case .subscribe = effect { .eventSubscribed } else { .eventUnsubscribed }
                let message = SubscriptionMessage(kind: kind, subscription: subscription)
                out.append(
                    OutgoingRecord(
                        record: ProducerRecord(
                            topic: names.events, partition: KafkaPartitioner.partition(forKey: subscription.mailbox, partitionCount: partitionCount),
                            key: Data(subscription.mailbox.utf8), value: Wire.encode(message), headers: Wire.headers(message.kind)),
                        origin: .subscription(id, step: subscription.step, attempt: subscription.attempt)))
            case .armTimer, .cancelTimer, .completed, .failed, .suspended, .cancelled, .purge:
                break
            }
        }
        return out
    }

    /// The records of the mailboxes a batch changed: each one's snapshot on the mailboxes topic (a tombstone once
    /// it is empty) and the records it delivers to waiting attempts. One that cannot be written (larger than the
    /// broker takes, or refused) is left out with an error: the attempts it was for time out and take their
    /// failure path.
    func mailboxRecords(_ keys: [String], effects: [String: [MailboxEffect]], eventsOffset: String, refused: [RecordOrigin: String]) -> [OutgoingRecord] {
        let headers = [KafkaHeader(key: WireHeaders.eventsOffset, string: eventsOffset), KafkaHeader(key: WireHeaders.coordinator, string: rules.identity)]
        var out: [OutgoingRecord] = []
        for key in keys {
            let value = mailboxes[key].map { Wire.encode(MailboxSnapshot(mailbox: $0)) }
            out.append(
                OutgoingRecord(
                    record: ProducerRecord(topic: names.mailboxes, partition: partition, key: Data(key.utf8), value: value, headers: headers + (value == nil ? [] : Wire.headers(.mailbox))),
                    origin: .mailbox(key)))
            for effect in effects[key] ?? [] {
                switch effect {
                case .deliver(let subscription, let record):
                    let message = EventReceivedMessage(instanceID: subscription.instanceID, step: subscription.step, attempt: subscription.attempt, mailbox: key, event: record)
                    out.append(
                        OutgoingRecord(
                            record: ProducerRecord(
                                topic: names.events, partition: KafkaPartitioner.partition(forKey: subscription.instanceID, partitionCount: partitionCount),
                                key: Data(subscription.instanceID.utf8), value: Wire.encode(message), headers: Wire.headers(.eventReceived)),
                            origin: .mailbox(key)))
                case .dropped, .expired:
                    break
                }
            }
        }
        return out.filter { r in
            let why = refused[r.origin] ?? (r.size > rules.maxRecordBytes ? "\(r.size) bytes, more than the limit of \(rules.maxRecordBytes)" : nil)
            guard let why else { return true }
            logger.error("a mailbox record cannot be written; it is left out", metadata: ["record": "\(r.origin)", "reason": "\(why)"])
            return false
        }
    }

    /// Commands go to the partition of their topic that matches this events partition, with the trace context of
    /// the event that caused them (a span of their own, or the unsampled context passed on).
    public func prepareCommands(_ plan: inout BatchPlan, partitionOf: (_ topic: String) -> Int32?) {
        let tracer = plan.tracing.tracer
        for i in plan.outgoing.indices {
            guard case .command(let id, let step, let item, let attempt, let compensation) = plan.outgoing[i].origin else { continue }
            plan.outgoing[i].record.partition = partitionOf(plan.outgoing[i].record.topic)
            if let passOn = plan.tracing.unsampled[id], plan.tracing.eventSpans[id] == nil {
                plan.outgoing[i].record.headers += passOn
            } else if let tracer {
                // The command's span: a child of the event's that caused it; the worker's span is its child.
                let parent = plan.tracing.eventSpans[id]?.context ?? tracer.context(from: instances[id]?.trace) ?? .topLevel
                let span = tracer.startAnySpan("\(compensation ? "compensate" : "send") \(step)", context: parent, ofKind: .producer)
                span.kafka(plan.outgoing[i].record.topic, partition: plan.outgoing[i].record.partition, operation: "send")
                span.updateAttributes { a in
                    a["baton.instance_id"] = id
                    a["baton.step"] = step
                    a["baton.attempt"] = attempt
                    if let item { a["baton.item"] = item }
                }
                tracer.inject(span.context, into: &plan.outgoing[i].record.headers, using: KafkaHeadersInjector())
                plan.tracing.spans.append(span)
            }
        }
    }
}

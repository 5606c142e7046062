import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Metrics
import Tracing

/// What applying one batch of events changes, gathered before anything is written: the instances and mailboxes
/// as they were (to restore them when the transaction fails), the effects and records that result, what the
/// metrics will count once it committed, and the batch's spans.
struct BatchPlan {
    let now: Timestamp
    /// Records the broker refused in an earlier try of the same batch: left out, their instances go on without them.
    let refused: [RecordOrigin: String]
    var originals: [String: InstanceState?] = [:]
    /// Instances kept encoded that this batch decoded: kept encoded again once it is over, if they still only wait.
    var thawed: [String] = []
    var effects: [String: [SagaEffect]] = [:]
    var deadLetters: [OutgoingRecord] = []
    /// Mailboxes this batch changed, as they were before it, and what they must do.
    var mailboxOriginals: [String: Mailbox?] = [:]
    var mailboxEffects: [String: [MailboxEffect]] = [:]
    /// Records delivered to attempts that could no longer take them, going back to their mailboxes.
    var returned: [OutgoingRecord] = []
    var observed = BatchObservations()
    /// Timer firings this batch read back (applied or not): no longer in flight.
    var firingsBack: [TimerEntry] = []
    var tracing: BatchTracing
    /// What the transaction writes, and the instances it removes for good once it committed.
    var outgoing: [OutgoingRecord] = []
    var purged = Set<String>()

    init(now: Timestamp, refused: [RecordOrigin: String], tracer: (any Tracer)?) {
        self.now = now
        self.refused = refused
        tracing = BatchTracing(tracer: tracer)
    }
}

/// The spans of a batch, ended once its transaction is over, and the trace context of instances that are not
/// sampled (W3C flags `00`): no span is made for them (none would be recorded); their trace context is passed on
/// to the commands as it is, so the workers do not trace them either.
struct BatchTracing {
    let tracer: (any Tracer)?
    var spans: [any Span] = []
    /// The span of each instance's last event.
    var eventSpans: [String: any Span] = [:]
    var unsampled: [String: [KafkaHeader]] = [:]
    var ended = false

    /// The span of processing an event: a child of the context its record carries (the worker's span of a
    /// result), else of the instance's own (kept in its state since its start).
    mutating func start(_ m: KafkaMessage, _ name: String, instance id: String, stored: [String: String]?) -> (any Span)? {
        guard let tracer else { return nil }
        if let passOn = TraceHeaders.unsampled(TraceHeaders.traceparent(of: m) ?? stored?[TraceHeaders.traceparent]) {
            unsampled[id] = [passOn]
            return nil
        }
        let parent = tracer.context(from: m.headers) ?? tracer.context(from: stored) ?? .topLevel
        let span = tracer.startAnySpan(name, context: parent, ofKind: .consumer)
        span.kafka(m.topic, partition: m.partition, offset: m.offset, operation: "process")
        span.attributes["baton.instance_id"] = id
        spans.append(span)
        eventSpans[id] = span
        return span
    }

    /// Ends every span once; with the error the transaction failed with, if it did.
    mutating func end(_ error: (any Error)?) {
        guard !ended else { return }
        ended = true
        for span in spans {
            if let error {
                span.recordError(error)
                span.setStatus(SpanStatus(code: .error, message: "the transaction failed"))
            }
            span.end()
        }
    }
}

extension OwnedPartition {
    // MARK: Processing

    /// Applies a batch of events and writes everything that results in one transaction with the consumed
    /// offsets. On failure nothing of it happened: the instances are restored. Records the broker refused in an
    /// earlier try of the same batch (`refused`) are left out, and their instances fail (see `goOnWithout`);
    /// a record over the size limit is treated the same way before it is sent.
    func process(_ messages: [KafkaMessage], now: Timestamp, refused: [RecordOrigin: String]) async throws {
        var plan = BatchPlan(now: now, refused: refused, tracer: context.tracer)
        defer {
            plan.tracing.end(nil)
            for id in plan.thawed { instances.settle(id) }
        }
        do {
            for m in messages { try await apply(m, to: &plan) }
            plan.outgoing = outgoingRecords(&plan, committedOffset: messages.last.map { String($0.offset + 1) } ?? "")
            try await context.commandTopics.ensure(Set(plan.outgoing.compactMap { r in if case .command = r.origin { r.record.topic } else { nil } }))
            prepareCommands(&plan)
            try await commit(plan.outgoing, messages: messages)
            for id in plan.purged {
                instances[id] = nil
                fired[id] = nil
            }
        } catch {
            for (id, original) in plan.originals {
                instances[id] = original
                instances.settle(id)
            }
            for (key, original) in plan.mailboxOriginals { mailboxes[key] = original }
            plan.tracing.end(error)
            throw error
        }
        settle(plan, messages)
    }

    /// Applies one event to the instance or mailbox it is for, or dead-letters it.
    func apply(_ m: KafkaMessage, to plan: inout BatchPlan) async throws {
        guard let value = m.value else { return deadLetter(m, .unreadable, "a record without a value", &plan) }
        let record: DecodedEvent
        do { record = try EventMessage.decodeRecord(value) } catch { return deadLetter(m, .unreadable, error.reason, &plan) }
        switch record.message {
        case .mailbox(let key, let event): applyMailbox(m, key: key, event, &plan)
        case .start(let start): try await applyStart(m, start, &plan)
        case .event(let id, let event): applyEvent(m, id: id, event, credentials: record.credentials, &plan)
        }
    }

    func deadLetter(_ m: KafkaMessage, _ why: DeadLetterReason, _ reason: String, _ plan: inout BatchPlan) {
        logger.warning("dead letter", metadata: ["offset": "\(m.partition)/\(m.offset)", "reason": "\(reason)"])
        plan.deadLetters.append(OutgoingRecord(record: deadLetterRecord(m, code: why, reason: reason, topic: names.deadletter), origin: .deadLetter(offset: m.offset)))
        plan.observed.deadLetters.append(why)
    }

    /// Records an applied transition: the instance's new state (its original kept for a rollback), its effects,
    /// what the metrics count.
    func record(_ id: String, _ transition: Transition, workflow: Workflow, event: SagaEvent?, _ plan: inout BatchPlan) {
        let before = instances[id]
        if plan.originals[id] == nil { plan.originals[id] = .some(before) }
        instances[id] = transition.state
        plan.effects[id, default: []] += transition.effects
        plan.observed.applied(workflow, event: event, before: before, after: transition.state, effects: transition.effects, dispatches: dispatches, now: plan.now)
    }

    /// A record delivered to an instance that cannot take it goes back to its mailbox (for another attempt).
    /// Whether `event` was such a delivery.
    func giveBack(_ event: SagaEvent, instance id: String, _ why: String, _ plan: inout BatchPlan) -> Bool {
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

    func applyMailbox(_ m: KafkaMessage, key: String, _ event: MailboxEvent, _ plan: inout BatchPlan) {
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
    func applyStart(_ m: KafkaMessage, _ start: StartMessage, _ plan: inout BatchPlan) async throws {
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
        var workflow = context.registry.workflow(start.workflowID, version: start.version)
        if workflow == nil {
            try await context.registry.catchUp(within: .seconds(2))
            workflow = context.registry.workflow(start.workflowID, version: start.version)
        }
        guard let workflow else {
            return deadLetter(m, .unknownWorkflow, "unknown workflow '\(start.workflowID)'\(start.version.map { " version \($0)" } ?? ""): register it first", &plan)
        }
        var transition = Saga.start(workflow, instanceID: id, input: start.input, now: plan.now, request: start.requestID, settings: context.settings)
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
    func applyEvent(_ m: KafkaMessage, id: String, _ event: SagaEvent, credentials: Credentials, _ plan: inout BatchPlan) {
        instances.thaw(id)
        plan.thawed.append(id)
        guard let state = instances[id] else {
            if giveBack(event, instance: id, "unknown instance", &plan) { return }
            return deadLetter(m, .unknownInstance, "unknown instance '\(id)' on \(m.topic)[\(m.partition)]", &plan)
        }
        guard let workflow = context.registry.workflow(state.workflowID, version: state.version) else {
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
        if let refusal = configuration.security.admit(credentials, event, instanceID: id, state: state, workflow: workflow, appendedAt: m.timestamp ?? plan.now) {
            return deadLetter(m, DeadLetterReason(refusal.code), "refused: \(refusal)", &plan)
        }
        let span = plan.tracing.start(m, event.spanName(workflow), instance: id, stored: state.trace)
        if let span {
            span.attributes["baton.workflow"] = workflow.id
            if let step = event.step { span.attributes["baton.step"] = step }
        }
        let transition = Saga.apply(workflow, to: state, event: event, now: plan.now, settings: context.settings)
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
    func outgoingRecords(_ plan: inout BatchPlan, committedOffset: String) -> [OutgoingRecord] {
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
    func fittedRecords(for id: String, _ plan: inout BatchPlan, committedOffset: String) -> (records: [OutgoingRecord], purge: Bool) {
        var instanceEffects = plan.effects[id] ?? []
        var dropped = Set<RecordOrigin>()
        var records: [OutgoingRecord] = []
        let limit = configuration.maxRecordBytes
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

    /// Commands go to the partition of their topic that matches this events partition, with the trace context of
    /// the event that caused them (a span of their own, or the unsampled context passed on).
    func prepareCommands(_ plan: inout BatchPlan) {
        let tracer = plan.tracing.tracer
        for i in plan.outgoing.indices {
            guard case .command(let id, let step, let item, let attempt, let compensation) = plan.outgoing[i].origin else { continue }
            plan.outgoing[i].record.partition = context.commandTopics.partition(for: plan.outgoing[i].record.topic, eventsPartition: partition)
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

    // MARK: After the commit

    /// The batch committed: counts it, moves the partition's offset, and schedules the timers of what changed.
    func settle(_ plan: BatchPlan, _ messages: [KafkaMessage]) {
        var observed = plan.observed
        for (id, original) in plan.originals where original?.status != instances[id]?.status {
            observed.statusChanges.append((original, instances[id]))
        }
        observed.record(into: metrics, dispatches: &dispatches)
        metrics.batchEvents.record(messages.count)
        if let last = messages.last { nextOffset = last.offset + 1 }
        settleMailboxes(plan)
        // A firing read back is no longer in flight, applied or not: a timer still armed (its firing was ignored
        // as not yet due, say after the clock went back) is scheduled again, to fire when it is due.
        for entry in plan.firingsBack where fired[entry.instanceID]?.remove(entry) != nil {
            if fired[entry.instanceID]?.isEmpty == true { fired[entry.instanceID] = nil }
            if plan.originals[entry.instanceID] == nil, let state = instances[entry.instanceID] { schedule(state) }
        }
        for id in plan.originals.keys {
            guard let state = instances[id] else { continue }
            if let pending = fired[id] {
                let stillArmed = pending.filter { entry in state.timers.contains { $0.key == entry.key && $0.dueAt == entry.dueAt } }
                fired[id] = stillArmed.isEmpty ? nil : stillArmed
            }
            schedule(state)
            instances.settle(id)
        }
        reportGauges()
    }

    func settleMailboxes(_ plan: BatchPlan) {
        for key in plan.mailboxOriginals.keys {
            fired[key] = nil
            schedule(mailbox: key)
            for effect in plan.mailboxEffects[key] ?? [] {
                switch effect {
                case .deliver: metrics.mailboxRecords("delivered").increment()
                case .dropped(let record, let reason):
                    logger.info("a kept record was dropped unused", metadata: ["mailbox": "\(key)", "record": "\(record.id)", "reason": "\(reason)"])
                    metrics.mailboxRecords("dropped").increment()
                case .expired: break
                }
            }
        }
        if !plan.returned.isEmpty { metrics.mailboxRecords("returned").increment(by: plan.returned.count) }
    }
}

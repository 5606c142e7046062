import BatonCore
import BatonRecords
import Tracing

/// What applying one batch of events changes, gathered before anything is written: the instances and mailboxes
/// as they were (to restore them when the transaction fails), the effects and records that result, what the
/// metrics will count once it committed, and the batch's spans.
public struct BatchPlan {
    public let now: Timestamp
    /// Records the broker refused in an earlier try of the same batch: left out, their instances go on without them.
    public let refused: [RecordOrigin: String]
    public var originals: [String: InstanceState?] = [:]
    /// Instances kept encoded that this batch decoded: kept encoded again once it is over, if they still only wait.
    public var thawed: [String] = []
    public var effects: [String: [SagaEffect]] = [:]
    public var deadLetters: [OutgoingRecord] = []
    /// Mailboxes this batch changed, as they were before it, and what they must do.
    public var mailboxOriginals: [String: Mailbox?] = [:]
    public var mailboxEffects: [String: [MailboxEffect]] = [:]
    /// Records delivered to attempts that could no longer take them, going back to their mailboxes.
    public var returned: [OutgoingRecord] = []
    public var observed = BatchObservations()
    /// Timer firings this batch read back (applied or not): no longer in flight.
    public var firingsBack: [TimerEntry] = []
    public var tracing: BatchTracing
    /// What the transaction writes, and the instances it removes for good once it committed.
    public var outgoing: [OutgoingRecord] = []
    public var purged = Set<String>()

    /// When each running attempt's command was sent, as the batch began (for the step durations it observes).
    public let dispatches: Dispatches
    /// Whether a start named a definition the registry did not have: read the registry, then plan the batch again.
    public var missesWorkflows = false

    public init(now: Timestamp, refused: [RecordOrigin: String], dispatches: Dispatches, tracer: (any Tracer)?) {
        self.now = now
        self.refused = refused
        self.dispatches = dispatches
        tracing = BatchTracing(tracer: tracer)
    }
}

/// The spans of a batch, ended once its transaction is over, and the trace context of instances that are not
/// sampled (W3C flags `00`): no span is made for them (none would be recorded); their trace context is passed on
/// to the commands as it is, so the workers do not trace them either.
public struct BatchTracing {
    public let tracer: (any Tracer)?
    public var spans: [any Span] = []
    /// The span of each instance's last event.
    public var eventSpans: [String: any Span] = [:]
    public var unsampled: [String: [KafkaHeader]] = [:]
    public var ended = false

    public init(tracer: (any Tracer)?) { self.tracer = tracer }

    /// The span of processing an event: a child of the context its record carries (the worker's span of a
    /// result), else of the instance's own (kept in its state since its start).
    public mutating func start(_ m: KafkaMessage, _ name: String, instance id: String, stored: [String: String]?) -> (any Span)? {
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
    public mutating func end(_ error: (any Error)?) {
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

extension SagaEvent {
    /// What a span of applying the event is called: the kind of event and its step.
    public func spanName(_ workflow: Workflow) -> String {
        switch self {
        case .stepCompleted(let step, _, _, _): "step.completed \(step)"
        case .stepFailed(let step, _, _, _, _): "step.failed \(step)"
        case .compensationCompleted(let step, _, _): "compensation.completed \(step)"
        case .compensationFailed(let step, _, _, _): "compensation.failed \(step)"
        case .taskDecided(let step, _, _, _, _, _, _, _): "task.decided \(step)"
        case .taskClaimed(let step, _, _, _, _, _): "task.claimed \(step)"
        case .heartbeat(let step, _, _, _): "step.heartbeat \(step)"
        case .timerFired(let key, _):
            "timer \(key.kind.rawValue)\(key.step.flatMap { workflow.steps.indices.contains($0) ? " \(workflow.steps[$0].id)" : nil } ?? "")"
        case .cancel: "operator cancel"
        case .resume: "operator resume"
        case .retry: "operator retry"
        case .skip(let step, _, _, _): "operator skip \(step)"
        case .eventReceived(let step, _, _, _): "event.received \(step)"
        case .signal(let name, _, _, _): "signal \(name)"
        }
    }
}

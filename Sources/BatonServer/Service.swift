import BatonClient
import BatonCore
import BatonReadModel
import BatonRuntime
import BatonWire
import Foundation
import HTTPTypes
import Logging

/// What the API and the console do, apart from HTTP: reads from the read model, writes through Kafka, each
/// write checked first (the same checks as the CLI) and answered once applied.
public struct BatonService: Sendable {
    public let model: ReadModel
    public let client: BatonClient
    public let auth: Authenticator
    /// Signs every decision, claim, operator action and signal with the principal that authenticated: the
    /// coordinators apply no such record without a signature they trust.
    public let signer: AuthoritySigner
    public let logger: Logger
    /// How long a write waits to see its effect before it answers 202 (sent, not yet applied).
    public var applyTimeout: Duration = .seconds(10)

    public init(model: ReadModel, client: BatonClient, auth: Authenticator, signer: AuthoritySigner, logger: Logger) {
        self.model = model
        self.client = client
        self.auth = auth
        self.signer = signer
        self.logger = logger
    }

    /// `record` signed as `principal`.
    func signed<R: AuthorityRecord>(_ record: R, by principal: Principal) throws -> R {
        var record = record
        do { try signer.sign(&record, as: principal, now: Self.now()) } catch { throw Problem(.internalServerError, .signing, "\(error)") }
        return record
    }

    static func newRequestID() -> String { UUID().uuidString.lowercased() }
    static func now() -> Int64 { WallClock.millis() }

    // MARK: Starts

    public struct StartRequest: Decodable, Sendable {
        var workflowID: String
        var version: Int?
        var input: JSON?
        var instanceID: String?
        enum CodingKeys: String, CodingKey { case workflowID = "workflow_id", version, input, instanceID = "instance_id" }
    }

    public enum StartOutcome: String, Codable, Sendable {
        /// Sent and acknowledged; no coordinator has taken it yet (or the caller did not wait).
        case accepted
        case created
        /// The instance existed with the same workflow and input.
        case exists
    }

    public struct StartAnswer: Encodable, Sendable {
        var instanceID: String
        var outcome: StartOutcome
        var requestID: String?
        var partition: Int32?
        var instance: InstanceSummary?
        enum CodingKeys: String, CodingKey { case instanceID = "instance_id", outcome, requestID = "request_id", partition, instance }
    }

    /// Starts an instance (or finds it started with the same input); a conflicting start is a 409.
    func start(_ request: StartRequest, wait: Bool) async throws -> StartAnswer {
        let id = request.instanceID ?? UUID().uuidString.lowercased()
        try checkID(id, what: "instance_id")
        guard !request.workflowID.isEmpty else { throw Problem.badRequest("field 'workflow_id' is empty") }
        let input = request.input ?? .object([:])
        let size = input.encoded().count
        if size > Wire.maxInputBytes { throw Problem(.contentTooLarge, .tooLarge, "the input is \(size) bytes, more than \(Wire.maxInputBytes)") }
        guard let (_, workflow) = model.definition(request.workflowID, version: request.version), workflow != nil else {
            let which = request.version.map { "version \($0) of " } ?? ""
            throw Problem(.unprocessableContent, .unknownWorkflow, "\(which)workflow '\(request.workflowID)' is not registered")
        }
        if let existing = model.state(id)?.state { return try existingStart(existing, request: request, input: input) }
        let requestID = Self.newRequestID()
        let message = StartMessage(instanceID: id, workflowID: request.workflowID, version: request.version, input: input, sentAt: Self.now(), requestID: requestID)
        try Self.refuseWhatCoordinatorsRefuse(message)
        try await client.sendEvent(message, kind: .start, instanceID: id)
        guard wait else { return StartAnswer(instanceID: id, outcome: .accepted, requestID: requestID) }
        let seen = await model.wait(timeout: applyTimeout) { $0.state(id)?.state }
        guard let seen else { return StartAnswer(instanceID: id, outcome: .accepted, requestID: requestID) }
        if seen.startRequest == requestID { return StartAnswer(instanceID: id, outcome: .created, requestID: requestID, instance: model.summary(id)) }
        return try existingStart(seen, request: request, input: input)
    }

    func existingStart(_ state: InstanceState, request: StartRequest, input: JSON) throws -> StartAnswer {
        guard state.isSameStart(workflowID: request.workflowID, version: request.version, input: input) else {
            throw Problem.conflict(
                "instance '\(state.instanceID)' exists already, started as \(state.workflowID) v\(state.version) with another input; this start changed nothing",
                extra: ["instance_id": .string(state.instanceID), "workflow_id": .string(state.workflowID), "version": .number(Double(state.version)), "input": state.input])
        }
        return StartAnswer(instanceID: state.instanceID, outcome: .exists, instance: model.summary(state.instanceID))
    }

    // MARK: Operator actions

    public struct ActionRequest: Decodable, Sendable {
        var action: OperatorMessage.Command
        var step: String?
        var output: JSON?
        var reason: String?
    }

    public enum ActionOutcome: String, Codable, Sendable { case applied, pending, refused }

    /// Checks an operator's action against the instance as the coordinator will (the same pure transition),
    /// sends it, and waits until the instance shows it applied.
    func act(_ request: ActionRequest, on instanceID: String, by principal: Principal, wait: Bool = true) async throws -> (ActionOutcome, String?) {
        guard let (state, workflow, _) = model.state(instanceID) else { throw Problem.notFound("no instance '\(instanceID)'") }
        guard let workflow else {
            throw Problem(.unprocessableContent, .unknownWorkflow, "instance '\(instanceID)' runs \(state.workflowID) v\(state.version), which is not registered")
        }
        let message = try signed(
            OperatorMessage(
                instanceID: instanceID, command: request.action, step: request.step, output: request.output, reason: request.reason, by: principal.subject,
                requestID: Self.newRequestID()), by: principal)
        guard case .event(_, let event) = try Self.refuseWhatCoordinatorsRefuse(message) else { throw Problem.badRequest("not an instance action") }
        if case .ignored(let why) = Saga.apply(workflow, to: state, event: event, now: Self.now()).outcome {
            return (.refused, "\(request.action.rawValue) refused for '\(instanceID)' (\(state.status.rawValue)): \(why)")
        }
        try await client.sendEvent(message, kind: .operatorCommand, instanceID: instanceID)
        guard wait else { return (.pending, message.requestID) }
        let applied = await model.wait(timeout: applyTimeout) { $0.state(instanceID)?.state.requests.contains(message.requestID) == true ? true : nil }
        return applied == true ? (.applied, nil) : (.pending, "sent (request \(message.requestID)); no coordinator applied it within \(applyTimeout)")
    }

    public struct SignalRequest: Decodable, Sendable {
        /// The signal's data; absent: true.
        var data: JSON?
    }

    /// Checks a signal against the instance as the coordinator will (the workflow must accept its name, the
    /// instance must not have finished), sends it, and waits until the instance shows it applied.
    func signal(_ name: String, _ request: SignalRequest, on instanceID: String, by principal: Principal, wait: Bool = true) async throws -> (ActionOutcome, String?) {
        guard let (state, workflow, _) = model.state(instanceID) else { throw Problem.notFound("no instance '\(instanceID)'") }
        guard let workflow else {
            throw Problem(.unprocessableContent, .unknownWorkflow, "instance '\(instanceID)' runs \(state.workflowID) v\(state.version), which is not registered")
        }
        if let data = request.data, data.encoded().count > Wire.maxResultBytes {
            throw Problem(.contentTooLarge, .tooLarge, "field 'data' is more than \(Wire.maxResultBytes) bytes")
        }
        let message = try signed(
            SignalMessage(instanceID: instanceID, name: name, data: request.data, by: principal.subject, requestID: Self.newRequestID(), sentAt: Self.now()), by: principal)
        guard case .event(_, let event) = try Self.refuseWhatCoordinatorsRefuse(message) else { throw Problem.badRequest("not an instance signal") }
        if case .ignored(let why) = Saga.apply(workflow, to: state, event: event, now: Self.now()).outcome {
            return (.refused, "signal '\(name)' refused for '\(instanceID)' (\(state.status.rawValue)): \(why)")
        }
        try await client.sendEvent(message, kind: .signal, instanceID: instanceID)
        guard wait else { return (.pending, message.requestID) }
        let applied = await model.wait(timeout: applyTimeout) { $0.state(instanceID)?.state.requests.contains(message.requestID) == true ? true : nil }
        return applied == true ? (.applied, nil) : (.pending, "sent (request \(message.requestID)); no coordinator applied it within \(applyTimeout)")
    }

    // MARK: Tasks

    public struct DecisionRequest: Decodable, Sendable {
        var approved: Bool
        var comment: String?
        var data: JSON?
    }

    public struct ClaimRequest: Decodable, Sendable {
        /// Who to assign it to (admins only); the caller when absent.
        var assignee: String?
    }

    func openTask(_ taskID: String, for principal: Principal) throws -> (TaskView, Int32) {
        guard let task = model.task(taskID), let partition = model.taskPartition(taskID) else { throw Problem.notFound("no task '\(taskID)'") }
        // Who claims is who decides: one rule for the subject of both (the wire's rule for ids), so that no one
        // can decide a task they could not claim.
        do { try InstanceID.check(principal.subject, field: "subject") } catch {
            throw Problem.forbidden("the principal's subject cannot claim or decide tasks: \(error.reason)")
        }
        guard principal.mayDecide(assignee: task.assignee) else {
            throw Problem.forbidden("task '\(taskID)' is for \(task.assignee); \(principal.subject) does not hold it")
        }
        guard task.status == .open else {
            throw Problem.conflict("task '\(taskID)' is \(task.status.rawValue)\(task.decidedBy.map { " (by \($0))" } ?? "")", extra: ["task": taskJSON(task)])
        }
        return (task, partition)
    }

    /// Approves or rejects a task as `principal`; exactly one of concurrent decisions wins, the others are 409.
    func decide(_ taskID: String, _ request: DecisionRequest, by principal: Principal) async throws -> (TaskView?, pending: Bool) {
        let (task, partition) = try openTask(taskID, for: principal)
        if let holder = task.claimedBy, holder != principal.subject, !principal.isAdmin {
            throw Problem.conflict("task '\(taskID)' is claimed by \(holder)", extra: ["task": taskJSON(task)])
        }
        if let comment = request.comment, comment.utf8.count > 4096 { throw Problem.badRequest("field 'comment' is longer than 4096 bytes") }
        let requestID = Self.newRequestID()
        let message = try signed(
            DecisionMessage(
                instanceID: task.instanceID, taskID: taskID, step: task.step, attempt: task.attempt, approved: request.approved, by: principal.subject,
                comment: request.comment, data: request.data, requestID: requestID, override: principal.isAdmin ? true : nil), by: principal)
        if let data = request.data, data.encoded().count > Wire.maxResultBytes {
            throw Problem(.contentTooLarge, .tooLarge, "field 'data' is more than \(Wire.maxResultBytes) bytes")
        }
        try Self.refuseWhatCoordinatorsRefuse(message)
        try await client.sendEvent(message, kind: .taskDecided, instanceID: task.instanceID, partition: partition)
        return try await settle(taskID, request: requestID, what: "decision")
    }

    /// Claims a task for the caller (or, for an admin, assigns it), or gives it back.
    func claim(_ taskID: String, claimant: String?, by principal: Principal) async throws -> (TaskView?, pending: Bool) {
        let (task, partition) = try openTask(taskID, for: principal)
        if let claimant, claimant != principal.subject, !principal.isAdmin { throw Problem.forbidden("only an admin assigns a task to someone else") }
        if let claimant { try checkID(claimant, what: "assignee") }
        if claimant == nil {
            guard let holder = task.claimedBy else { throw Problem.conflict("task '\(taskID)' is not claimed") }
            if holder != principal.subject, !principal.isAdmin { throw Problem.conflict("task '\(taskID)' is claimed by \(holder): only they give it back") }
        } else if let holder = task.claimedBy {
            if holder == claimant { return (task, false) }
            if !principal.isAdmin { throw Problem.conflict("task '\(taskID)' is claimed by \(holder)", extra: ["task": taskJSON(task)]) }
        }
        let requestID = Self.newRequestID()
        let message = try signed(
            ClaimMessage(
                instanceID: task.instanceID, taskID: taskID, step: task.step, attempt: task.attempt, claimant: claimant, by: principal.subject,
                requestID: requestID, override: principal.isAdmin ? true : nil), by: principal)
        try await client.sendEvent(message, kind: .taskClaimed, instanceID: task.instanceID, partition: partition)
        return try await settle(taskID, request: requestID, what: claimant == nil ? "unclaim" : "claim")
    }

    /// Waits until the task's history shows the request (applied), or the task changed in a way that shuts it
    /// out (decided by someone else, claimed by someone else: 409).
    func settle(_ taskID: String, request: String, what: String) async throws -> (TaskView?, pending: Bool) {
        let before = model.task(taskID)
        let seen = await model.wait(timeout: applyTimeout) { model -> TaskView? in
            guard let task = model.task(taskID) else { return nil }
            if task.history.contains(where: { $0.request == request }) { return task }
            if task.status != .open || (task != before && task.history.count > (before?.history.count ?? 0)) { return task }
            return nil
        }
        guard let seen else { return (nil, true) }
        if seen.history.contains(where: { $0.request == request }) { return (seen, false) }
        let last = seen.history.last
        let who = last?.by.map { " by \($0)" } ?? ""
        throw Problem.conflict(
            "the \(what) lost: task '\(taskID)' was \(last?.action.rawValue ?? seen.status.rawValue)\(who) first", extra: ["task": taskJSON(seen)])
    }

    /// Reads a record as a coordinator will (`EventMessage.decode`: ids, sizes, nesting, attempts) and refuses it
    /// here with the same reason, so that nothing the server accepts ends on the dead-letter topic.
    @discardableResult
    static func refuseWhatCoordinatorsRefuse<M: Encodable>(_ message: M) throws -> EventMessage {
        do { return try EventMessage.decode(Wire.encode(message)) } catch { throw Problem.badRequest(error.reason) }
    }

    /// What a principal may do with a task now.
    func actions(_ task: TaskView, for principal: Principal) -> [String] {
        guard task.status == .open, principal.mayDecide(assignee: task.assignee) else { return [] }
        var out: [String] = []
        if task.claimedBy == nil { out.append("claim") }
        if task.claimedBy == principal.subject || (task.claimedBy != nil && principal.isAdmin) { out.append("unclaim") }
        if task.claimedBy == nil || task.claimedBy == principal.subject || principal.isAdmin { out += ["approve", "reject"] }
        return out
    }

    func taskJSON(_ task: TaskView) -> JSON {
        let data = (try? JSONEncoder().encode(task)) ?? Data()  // TaskView always encodes
        return (try? JSONDecoder().decode(JSON.self, from: data)) ?? .null  // and reads back as JSON
    }

    // MARK: Inbox

    public enum InboxView: String, CaseIterable, Sendable { case open, mine, unassigned, completed }

    func inbox(_ view: InboxView, for principal: Principal, instanceID: String? = nil, search: String? = nil) -> [TaskView] {
        model.tasks(where: inboxFilter(view, for: principal, instanceID: instanceID, search: search))
    }

    /// How many tasks a view holds (every page's header shows the open ones: counted, not listed).
    func inboxCount(_ view: InboxView, for principal: Principal) -> Int {
        model.countTasks(where: inboxFilter(view, for: principal, instanceID: nil, search: nil))
    }

    func inboxFilter(_ view: InboxView, for principal: Principal, instanceID: String?, search: String?) -> (TaskView) -> Bool {
        let needle = search?.lowercased()
        return { task in
            if let instanceID, task.instanceID != instanceID { return false }
            if let needle, !needle.isEmpty,
                !(task.title.lowercased().contains(needle) || task.instanceID.lowercased().contains(needle) || task.taskID.lowercased().contains(needle))
            {
                return false
            }
            // Linked from an instance: every task of it, to anyone who may see the instance.
            let mayDecide = principal.mayDecide(assignee: task.assignee) || (instanceID != nil && principal.isOperator)
            switch view {
            case .open: return task.status == .open && mayDecide
            case .mine: return task.status == .open && task.claimedBy == principal.subject
            case .unassigned: return task.status == .open && task.claimedBy == nil && mayDecide
            case .completed: return task.status != .open && mayDecide
            }
        }
    }

    // MARK: Definitions

    public enum RegisterOutcome: String, Codable, Sendable { case registered, unchanged }

    /// Registers a definition (JSON or YAML text), first-wins: the same id and version with another content
    /// is a 409 naming what is registered (its document and `registered_at`), also when it came first by a
    /// moment in a concurrent registration (`BatonClient.registration` reads its own record back and decides
    /// by the rule every reader applies).
    func register(_ document: Data) async throws -> (Workflow, RegisterOutcome) {
        let workflow: Workflow
        do {
            workflow = try DefinitionLoader.load(document, source: "body")
        } catch {
            throw Problem(.unprocessableContent, .invalidDefinition, "\(error)")
        }
        let text = String(decoding: document, as: UTF8.self)
        func conflict(_ registered: DefinitionRecord) -> Problem {
            Problem.conflict(
                "\(workflow.id) version \(workflow.version) is registered already with another content; give the changed definition a new version",
                extra: [
                    "registered": .object([
                        "workflow_id": .string(registered.workflowID), "version": .number(Double(registered.version)),
                        "registered_at": .number(Double(registered.registeredAt)), "document": .string(registered.document),
                    ])
                ])
        }
        if let (record, _) = model.definition(workflow.id, version: workflow.version) {
            if record.document == text { return (workflow, .unchanged) }
            throw conflict(record)
        }
        let registration: Registration
        do {
            registration = try await client.registration(document: document, source: "body")
        } catch let error as DefinitionConflict {
            throw conflict(error.registered)
        } catch let error as DefinitionErrors {
            throw Problem(.unprocessableContent, .invalidDefinition, error.description)
        } catch let error as ClientError {
            // Written, or not, but not read back in time (the broker is slow or away): nothing is known yet.
            throw Problem(.serviceUnavailable, .unavailable, "\(error.description); try again: the same text is answered 200 once it is registered")
        }
        // Answered once the read model shows the version's winner, so that a start right after finds it.
        _ = await model.wait(timeout: applyTimeout) { $0.definition(workflow.id, version: workflow.version)?.record == registration.record ? true : nil }
        return (workflow, registration.outcome == .registered ? .registered : .unchanged)
    }
}

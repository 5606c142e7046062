import BatonCore
import BatonWire
import Foundation

/// An instance in a list: what filters and lists show.
public struct InstanceSummary: Sendable, Hashable, Codable {
    public var instanceID: String
    public var workflowID: String
    public var version: Int
    public var status: InstanceStatus
    public var startedAt: Int64
    /// When its latest snapshot was written.
    public var updatedAt: Int64
    public var finishedAt: Int64?
    public var failedStep: String?
    public var reason: String?

    public init(_ state: InstanceState, updatedAt: Int64) {
        instanceID = state.instanceID
        workflowID = state.workflowID
        version = state.version
        status = state.status
        startedAt = state.startedAt
        self.updatedAt = updatedAt
        finishedAt = state.finishedAt
        failedStep = state.failedStep
        reason = state.reason.map { Wire.cut($0, to: 512) }
    }

    enum CodingKeys: String, CodingKey {
        case instanceID = "instance_id", workflowID = "workflow_id", version, status, startedAt = "started_at", updatedAt = "updated_at"
        case finishedAt = "finished_at", failedStep = "failed_step", reason
    }
}

/// Which instances a list shows.
public struct InstanceFilter: Sendable, Hashable {
    public var statuses: Set<InstanceStatus>?
    public var workflowID: String?
    public var version: Int?
    /// Only those changed at or after this time (ms since the epoch).
    public var updatedSince: Int64?
    public var idPrefix: String?
    public init(statuses: Set<InstanceStatus>? = nil, workflowID: String? = nil, version: Int? = nil, updatedSince: Int64? = nil, idPrefix: String? = nil) {
        self.statuses = statuses
        self.workflowID = workflowID
        self.version = version
        self.updatedSince = updatedSince
        self.idPrefix = idPrefix
    }

    public func matches(_ s: InstanceSummary) -> Bool {
        if let statuses, !statuses.contains(s.status) { return false }
        if let workflowID, s.workflowID != workflowID { return false }
        if let version, s.version != version { return false }
        if let updatedSince, s.updatedAt < updatedSince { return false }
        if let idPrefix, !s.instanceID.hasPrefix(idPrefix) { return false }
        return true
    }
}

/// Where a page of a list ends: the last instance's last change and id (lists are newest change first).
public struct PageCursor: Sendable, Hashable {
    public var updatedAt: Int64
    public var instanceID: String
    public init(updatedAt: Int64, instanceID: String) {
        self.updatedAt = updatedAt
        self.instanceID = instanceID
    }

    /// Opaque text for clients: base64url of `<updated_at>:<instance_id>`.
    public var token: String {
        Data("\(updatedAt):\(instanceID)".utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public init?(token: String) {
        var base64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let data = Data(base64Encoded: base64), let text = String(data: data, encoding: .utf8), let colon = text.firstIndex(of: ":"),
            let at = Int64(text[..<colon])
        else { return nil }
        self.init(updatedAt: at, instanceID: String(text[text.index(after: colon)...]))
    }

    /// Whether `s` comes after the cursor in list order.
    func precedes(_ s: InstanceSummary) -> Bool {
        s.updatedAt < updatedAt || (s.updatedAt == updatedAt && s.instanceID > instanceID)
    }
}

public struct InstancePage: Sendable, Hashable {
    public var items: [InstanceSummary]
    public var next: PageCursor?
}

/// A human task as inboxes show it.
public struct TaskView: Sendable, Hashable, Codable {
    public var taskID: String
    public var instanceID: String
    public var workflowID: String
    public var step: String
    public var attempt: Int
    public var assignee: String
    public var title: String
    public var input: JSON
    public var createdAt: Int64
    public var dueAt: Int64
    /// open, approved, rejected, timed_out, escalated or cancelled.
    public var status: TaskRecord.Status
    public var claimedBy: String?
    public var decidedBy: String?
    /// The comment of the decision, when there was one.
    public var comment: String?
    public var closedAt: Int64?
    public var history: [TaskActivity]

    public init?(_ record: TaskRecord) {
        guard let task = record.task else { return nil }
        taskID = record.taskID
        instanceID = task.instanceID
        workflowID = task.workflowID
        step = task.step
        attempt = task.attempt
        assignee = task.assignee
        title = task.title
        input = task.input
        createdAt = task.createdAt
        dueAt = task.dueAt
        status = record.status
        claimedBy = task.claimedBy
        decidedBy = record.decidedBy
        let decision = task.history.last { $0.action == .approved || $0.action == .rejected }
        comment = decision?.comment
        closedAt = record.status == .open ? nil : record.at
        history = task.history
    }

    /// The role a principal needs to claim or decide it: the name after `role:` of its assignee (nil for `user:`).
    public var role: String? { assignee.hasPrefix("role:") ? String(assignee.dropFirst(5)) : nil }
    /// The user it is assigned to, for `user:<name>`.
    public var user: String? { assignee.hasPrefix("user:") ? String(assignee.dropFirst(5)) : nil }

    enum CodingKeys: String, CodingKey {
        case taskID = "task_id", instanceID = "instance_id", workflowID = "workflow_id", step, attempt, assignee, title, input
        case createdAt = "created_at", dueAt = "due_at", status, claimedBy = "claimed_by", decidedBy = "decided_by", comment
        case closedAt = "closed_at", history
    }
}

/// One line of an instance's timeline.
public struct TimelineEntry: Sendable, Hashable, Codable {
    public var at: Int64
    public var event: String
    public var step: String?
    public var detail: String?
}

/// An instance with everything a person needs to see: its steps (with outputs), tasks and timeline.
public struct InstanceDetail: Sendable, Hashable, Codable {
    public var instance: InstanceView
    public var updatedAt: Int64
    public var tasks: [TaskView]
    public var timeline: [TimelineEntry]
    /// Steps whose compensation ran, in the order it ran.
    public var compensated: [String]

    enum CodingKeys: String, CodingKey { case instance, updatedAt = "updated_at", tasks, timeline, compensated }

    init(state: InstanceState, workflow: Workflow?, updatedAt: Int64, tasks: [TaskView]) {
        instance = InstanceView(state, workflow: workflow)
        self.updatedAt = updatedAt
        self.tasks = tasks
        var timeline = [TimelineEntry(at: state.startedAt, event: "started", detail: "\(state.workflowID) v\(state.version)")]
        for step in instance.steps {
            if let at = step.startedAt { timeline.append(TimelineEntry(at: at, event: "step started", step: step.id, detail: nil)) }
            if let at = step.finishedAt {
                timeline.append(TimelineEntry(at: at, event: "step \(step.status.rawValue)", step: step.id, detail: step.error.map { Wire.cut($0, to: 512) }))
            }
        }
        for task in tasks {
            for h in task.history where h.action != .notified {
                let who = [h.by.map { "by \($0)" }, h.to.map { "to \($0)" }, h.comment].compactMap { $0 }.joined(separator: ", ")
                timeline.append(TimelineEntry(at: h.at, event: "task \(h.action.rawValue)", step: task.step, detail: who.isEmpty ? nil : who))
            }
        }
        if let at = state.finishedAt { timeline.append(TimelineEntry(at: at, event: state.status.rawValue, detail: state.reason)) }
        self.timeline = timeline.enumerated().sorted { ($0.element.at, $0.offset) < ($1.element.at, $1.offset) }.map(\.element)
        var order: [(Int, String)] = []
        for (s, step) in state.steps.enumerated() {
            for unit in step.units where unit.compensation == .done {
                order.append((unit.compensatedSeq ?? Int.max, instance.steps[s].id))
            }
        }
        var seen = Set<String>()
        compensated = order.sorted { $0.0 < $1.0 }.map(\.1).filter { seen.insert($0).inserted }
    }
}

/// A registered definition, as lists show it.
public struct DefinitionSummary: Sendable, Hashable, Codable {
    public var workflowID: String
    public var version: Int
    public var registeredAt: Int64
    public var steps: Int
    /// Why the document does not load, for a record Baton did not write.
    public var error: String?
    enum CodingKeys: String, CodingKey { case workflowID = "workflow_id", version, registeredAt = "registered_at", steps, error }
}

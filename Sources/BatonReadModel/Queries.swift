import BatonCore
import BatonWire
import Foundation
import Synchronization

extension ReadModel {
    // MARK: Instances

    /// A page of instances matching `filter`, newest change first, after `cursor`.
    public func instances(_ filter: InstanceFilter = .init(), limit: Int = 50, after cursor: PageCursor? = nil) -> InstancePage {
        let limit = max(1, limit)
        var found: [InstanceSummary] = store.withLock { store in
            var out: [InstanceSummary] = []
            func consider(_ id: String) {
                guard let s = store.instances[id]?.summary, filter.matches(s) else { return }
                if let cursor, !cursor.precedes(s) { return }
                out.append(s)
            }
            if let statuses = filter.statuses {
                for status in statuses { for id in store.byStatus[status] ?? [] { consider(id) } }
            } else {
                for id in store.instances.keys { consider(id) }
            }
            return out
        }
        found.sort { ($0.updatedAt, $1.instanceID) > ($1.updatedAt, $0.instanceID) }
        let page = Array(found.prefix(limit))
        let next = found.count > limit ? page.last.map { PageCursor(updatedAt: $0.updatedAt, instanceID: $0.instanceID) } : nil
        return InstancePage(items: page, next: next)
    }

    /// How many instances there are, by status.
    public func counts() -> [InstanceStatus: Int] {
        store.withLock { $0.byStatus.mapValues(\.count).filter { $0.value > 0 } }
    }

    public func summary(_ instanceID: String) -> InstanceSummary? { store.withLock { $0.instances[instanceID]?.summary } }

    /// The instance's latest state with its outputs put back, its workflow, and when it last changed.
    public func state(_ instanceID: String) -> (state: InstanceState, workflow: Workflow?, updatedAt: Int64)? {
        let held: (Data, [Data], Int64, DefinitionEntry?)? = store.withLock { store in
            guard let entry = store.instances[instanceID] else { return nil }
            let key = DefinitionRecord.key(entry.summary.workflowID, entry.summary.version)
            return (entry.snapshot, Array((store.outputs[instanceID] ?? [:]).values), entry.summary.updatedAt, store.definitions[key])
        }
        guard let (snapshot, outputs, updatedAt, definition) = held, var state = try? StateCodec.decode(snapshot) else { return nil }
        let workflow = definition?.workflow
        if let workflow {
            let stored = outputs.compactMap { try? Wire.decode(OutputRecord.self, from: $0) }.compactMap { r in
                workflow.index[r.step].map { StoredOutput(step: $0, item: r.item, attempt: r.attempt, output: r.output) }
            }
            state.restore(outputs: stored, workflow: workflow)
        }
        return (state, workflow, updatedAt)
    }

    /// Everything about an instance: steps with outputs, its tasks, its timeline.
    public func detail(_ instanceID: String) -> InstanceDetail? {
        guard let (state, workflow, updatedAt) = state(instanceID) else { return nil }
        return InstanceDetail(state: state, workflow: workflow, updatedAt: updatedAt, tasks: tasks(ofInstance: instanceID))
    }

    // MARK: Tasks

    public func task(_ taskID: String) -> TaskView? { store.withLock { $0.tasks[taskID] }.flatMap(TaskView.init) }

    public func tasks(ofInstance instanceID: String) -> [TaskView] {
        store.withLock { store in store.tasks.values.filter { $0.task?.instanceID == instanceID } }.compactMap(TaskView.init).sorted { $0.createdAt < $1.createdAt }
    }

    /// Every task for which `include` holds: open ones by due time, closed ones newest first.
    public func tasks(where include: (TaskView) -> Bool) -> [TaskView] {
        let all = store.withLock { Array($0.tasks.values) }.compactMap(TaskView.init).filter(include)
        return all.sorted { a, b in
            if (a.status == .open) != (b.status == .open) { return a.status == .open }
            if a.status == .open { return (a.dueAt, a.taskID) < (b.dueAt, b.taskID) }
            return (a.closedAt ?? 0, a.taskID) > (b.closedAt ?? 0, b.taskID)
        }
    }

    /// How many tasks `include` holds for.
    public func countTasks(where include: (TaskView) -> Bool) -> Int {
        store.withLock { Array($0.tasks.values) }.lazy.compactMap(TaskView.init).filter(include).count
    }

    /// The events partition a decision on a task goes to.
    public func taskPartition(_ taskID: String) -> Int32? { store.withLock { $0.tasks[taskID]?.partition } }

    // MARK: Definitions

    public func definitions() -> [DefinitionSummary] {
        store.withLock { store in
            store.definitions.values.map {
                DefinitionSummary(workflowID: $0.record.workflowID, version: $0.record.version, registeredAt: $0.record.registeredAt, steps: $0.workflow?.steps.count ?? 0, error: $0.error)
            }
        }.sorted { ($0.workflowID, $0.version) < ($1.workflowID, $1.version) }
    }

    /// A registered definition's record and workflow (the latest version when `version` is nil).
    public func definition(_ workflowID: String, version: Int? = nil) -> (record: DefinitionRecord, workflow: Workflow?)? {
        store.withLock { store in
            let entry: DefinitionEntry?
            if let version {
                entry = store.definitions[DefinitionRecord.key(workflowID, version)]
            } else {
                entry = store.definitions.values.filter { $0.record.workflowID == workflowID }.max { $0.record.version < $1.record.version }
            }
            return entry.map { ($0.record, $0.workflow) }
        }
    }

    // MARK: Alerts and dead letters

    /// The latest alerts, newest first.
    public func alerts(limit: Int = 100) -> [AlertEntry] { store.withLock { Array($0.alerts.suffix(max(0, limit)).reversed()) } }

    /// The latest dead letters, newest first.
    public func deadLetters(limit: Int = 100) -> [DeadLetterEntry] { store.withLock { Array($0.deadLetters.suffix(max(0, limit)).reversed()) } }

    public func deadLetter(_ id: String) -> DeadLetterEntry? { store.withLock { $0.deadLetters.last { $0.id == id } } }

    // MARK: Size

    /// What the read model holds: instances, tasks, definitions, and the bytes of snapshots and outputs.
    public func size() -> (instances: Int, tasks: Int, definitions: Int, bytes: Int) {
        store.withLock { ($0.instances.count, $0.tasks.count, $0.definitions.count, $0.heldBytes) }
    }
}

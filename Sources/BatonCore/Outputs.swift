/// A step output as it is stored apart from the instance's snapshot: the output of one unit (a step without
/// items has one unit, 0; a for_each step one per item), or the output an operator gave a skipped step.
public struct StoredOutput: Sendable, Hashable {
    public var step: Int
    /// The unit; nil for a skipped step's operator-given output.
    public var item: Int?
    public var attempt: Int
    public var output: JSON

    public init(step: Int, item: Int?, attempt: Int, output: JSON) {
        self.step = step
        self.item = item
        self.attempt = attempt
        self.output = output
    }
}

extension InstanceState {
    /// Every output the state holds. A step's own output is derived from its units' (`restore`), except a
    /// skipped step's, which an operator gave.
    public var storedOutputs: [StoredOutput] {
        var out: [StoredOutput] = []
        for (s, step) in steps.enumerated() {
            for (u, unit) in step.units.enumerated() {
                if let output = unit.output { out.append(StoredOutput(step: s, item: u, attempt: unit.attempt, output: output)) }
            }
            if step.status == .skipped, let output = step.output { out.append(StoredOutput(step: s, item: nil, attempt: 0, output: output)) }
        }
        return out
    }

    /// The outputs this state holds that `previous` did not (a unit completed in a new attempt, an operator
    /// gave a skipped step an output).
    public func outputsAdded(since previous: InstanceState?) -> [StoredOutput] {
        storedOutputs.filter { o in
            guard let previous, o.step < previous.steps.count else { return true }
            let before = previous.steps[o.step]
            guard let item = o.item else { return before.status != .skipped || before.output != o.output }
            guard item < before.units.count else { return true }
            return before.units[item].attempt != o.attempt || before.units[item].output == nil
        }
    }

    /// The state without its outputs: what the snapshot on the state topic holds.
    public var withoutOutputs: InstanceState {
        var copy = self
        for s in copy.steps.indices {
            copy.steps[s].output = nil
            for u in copy.steps[s].units.indices { copy.steps[s].units[u].output = nil }
        }
        return copy
    }

    /// Puts outputs read from the outputs topic back into a snapshot. An output of an attempt the state no
    /// longer runs (the step was restarted since) is left out. Completed steps get their output again: a
    /// plain step its unit's, a for_each step the array of its items'.
    public mutating func restore(outputs: [StoredOutput], workflow: Workflow) {
        for o in outputs where o.step < steps.count {
            if let item = o.item {
                guard item < steps[o.step].units.count, steps[o.step].units[item].attempt == o.attempt else { continue }
                steps[o.step].units[item].output = o.output
            } else if steps[o.step].status == .skipped {
                steps[o.step].output = o.output
            }
        }
        for s in steps.indices where steps[s].status == .completed && s < workflow.steps.count {
            let units = steps[s].units
            // (`JSON` is nil-literal expressible: spell out the absent output rather than `?? nil`, which means `.null`.)
            steps[s].output = workflow.steps[s].forEach == nil ? units.first.flatMap(\.output) : .array(units.map { $0.output ?? .null })
        }
    }
}

extension InstanceState {
    /// The state with what may make it large left out (input, for_each items, progress, long errors): for an
    /// instance whose snapshot the broker refused, which is then kept as a record of how it ended.
    public var minimized: InstanceState {
        var copy = self
        copy.input = .null
        copy.output = nil
        for s in copy.steps.indices {
            copy.steps[s].items = copy.steps[s].items.map { _ in [] }
            copy.steps[s].output = nil
            copy.steps[s].error = copy.steps[s].error.map { String($0.prefix(500)) }
            for u in copy.steps[s].units.indices {
                copy.steps[s].units[u].output = nil
                copy.steps[s].units[u].progress = nil
                copy.steps[s].units[u].error = copy.steps[s].units[u].error.map { String($0.prefix(500)) }
                copy.steps[s].units[u].compensationError = copy.steps[s].units[u].compensationError.map { String($0.prefix(500)) }
            }
        }
        copy.reason = copy.reason.map { String($0.prefix(2000)) }
        return copy
    }
}

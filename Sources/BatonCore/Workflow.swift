/// A checked definition with its graph indexed for the state machine.
public struct Workflow: Sendable, Hashable {
    public let definition: WorkflowDefinition
    public let index: [String: Int]
    /// For each step, the steps it depends on.
    public let dependencies: [[Int]]
    /// For each step, the steps that depend on it.
    public let dependents: [[Int]]
    /// Every step after all of its dependencies.
    public let topologicalOrder: [Int]
    let conditions: [Condition?]
    /// For each step, the steps whose outputs its input, condition, items or compensation read.
    let reads: [[Int]]

    public var id: String { definition.workflowID }
    public var version: Int { definition.version }
    public var steps: [StepDefinition] { definition.steps }

    /// Conditions of the triggers, parsed (in the order of `definition.triggers`).
    public let triggerConditions: [Condition?]

    /// Checks and indexes a definition built in code.
    public init(_ definition: WorkflowDefinition) throws(DefinitionErrors) {
        let (workflow, errors) = WorkflowValidator.compile(definition, knownErrors: [])
        guard let workflow, errors.isEmpty else { throw DefinitionErrors(errors: errors) }
        self = workflow
    }

    init(
        definition: WorkflowDefinition, index: [String: Int], dependencies: [[Int]], dependents: [[Int]], topologicalOrder: [Int], conditions: [Condition?], reads: [[Int]],
        triggerConditions: [Condition?] = []
    ) {
        self.triggerConditions = triggerConditions
        self.definition = definition
        self.index = index
        self.dependencies = dependencies
        self.dependents = dependents
        self.topologicalOrder = topologicalOrder
        self.conditions = conditions
        self.reads = reads
    }
}

public enum WorkflowValidator {
    /// The namespace whose topics (`<namespace>.events`, ...) no trigger or event wait may read, when a caller does
    /// not name its own.
    public static let defaultNamespace = "baton"

    /// Why a business topic cannot be read by a trigger or an event wait, if it cannot: the engine's own topics
    /// (and Kafka's internal ones) carry the engine's records, not business events.
    public static func engineTopicProblem(_ topic: String, namespace: String = defaultNamespace) -> String? {
        if !namespace.isEmpty, topic == namespace || topic.hasPrefix("\(namespace).") {
            return "'\(topic)' is one of the engine's topics (namespace '\(namespace)'): read a business topic, which your services write"
        }
        if topic.hasPrefix("__") { return "'\(topic)' is one of Kafka's internal topics" }
        return nil
    }

    /// Checks what the reader cannot see field by field: the graph, and what each path may read.
    static func compile(_ definition: WorkflowDefinition, knownErrors: [DefinitionError], namespace: String = defaultNamespace) -> (Workflow?, [DefinitionError]) {
        var errors: [DefinitionError] = []
        let steps = definition.steps
        var index: [String: Int] = [:]
        for (i, step) in steps.enumerated() {
            if let first = index[step.id] {
                errors.append(.init(path: "steps[\(i)].id", message: "duplicate id '\(step.id)' (first used by steps[\(first)])"))
            } else {
                index[step.id] = i
            }
        }
        var dependencies: [[Int]] = Array(repeating: [], count: steps.count)
        var dependents: [[Int]] = Array(repeating: [], count: steps.count)
        let ids = Array(index.keys)
        for (i, step) in steps.enumerated() where index[step.id] == i {
            var seen = Set<Int>()
            for (j, dep) in step.dependsOn.enumerated() {
                guard let d = index[dep] else {
                    let hint = closestMatch(to: dep, among: ids).map { " (did you mean '\($0)'?)" } ?? ""
                    errors.append(.init(path: "steps[\(i)].depends_on[\(j)]", message: "unknown step '\(dep)'\(hint)"))
                    continue
                }
                if d == i {
                    errors.append(.init(path: "steps[\(i)].depends_on[\(j)]", message: "a step cannot depend on itself: \(step.id) -> \(step.id)"))
                    continue
                }
                if !seen.insert(d).inserted {
                    errors.append(.init(path: "steps[\(i)].depends_on[\(j)]", message: "'\(dep)' is listed twice"))
                    continue
                }
                dependencies[i].append(d)
                dependents[d].append(i)
            }
        }
        for cycle in cycles(dependencies: dependencies) {
            let names = cycle.map { steps[$0].id }
            errors.append(.init(path: "steps[\(cycle[0])].depends_on", message: "cycle: \(names.joined(separator: " -> "))"))
        }

        var conditions: [Condition?] = Array(repeating: nil, count: steps.count)
        var reads: [[Int]] = Array(repeating: [], count: steps.count)
        for (i, step) in steps.enumerated() {
            let path = "steps[\(i)]"
            if step.isHumanTask {
                if step.compensation != nil {
                    errors.append(.init(path: "\(path).compensation", message: "a human_task cannot have a compensation: a decision cannot be undone (compensate the steps around it instead)"))
                }
                if step.forEach != nil {
                    errors.append(.init(path: "\(path).for_each", message: "a human_task cannot run for_each; use one task per decision"))
                }
            }
            if let ctype = step.compensation?.type, StepDefinition.builtInTypes.contains(ctype) {
                errors.append(.init(path: "\(path).compensation.type", message: "a compensation is a command to a worker; it cannot be a \(ctype)"))
            }
            if let event = step.event {
                if let problem = engineTopicProblem(event.topic, namespace: namespace) {
                    errors.append(.init(path: "\(path).event.topic", message: problem))
                }
                do {
                    let correlate = try ValuePath(parsing: event.correlate)
                    if correlate.root != "event" {
                        errors.append(.init(path: "\(path).event.correlate", message: "\(event.correlate) must read the record: $.event.key or $.event.value.<field>"))
                    }
                } catch {
                    errors.append(.init(path: "\(path).event.correlate", message: error.description))
                }
                if let ttl = event.ttl, ttl > Millis.days(365) {
                    errors.append(.init(path: "\(path).event.ttl", message: "\(ttl) is longer than a year"))
                }
            }
            if let when = step.when {
                do { conditions[i] = try Condition(parsing: when) } catch {
                    errors.append(.init(path: "\(path).when", message: "'\(when)' is not a valid condition: \(error.reason)"))
                }
            }
        }

        let signalNames = definition.signalNames
        let (triggerConditions, triggerProblems) = triggerErrors(definition, namespace: namespace)

        // Paths may only read steps that certainly finished before: ancestors in the graph.
        let graphIsSound = errors.isEmpty && knownErrors.isEmpty
        let order = graphIsSound ? topologicalOrder(dependencies: dependencies) : []
        let ancestors = graphIsSound ? AncestorSets(order: order, dependencies: dependencies) : nil
        for (i, step) in steps.enumerated() {
            let path = "steps[\(i)]"
            var refs: [(String, String, ReadScope)] = []
            if let input = step.input {
                refs += InputTemplate.paths(in: input, at: "\(path).input").map { ($0.location, $0.text, .step) }
            }
            if let condition = conditions[i] {
                refs += condition.paths.map { ("\(path).when", $0.text, .condition) }
            }
            if let forEach = step.forEach { refs.append(("\(path).for_each.items", forEach.items, .items)) }
            if let input = step.compensation?.input {
                refs += InputTemplate.paths(in: input, at: "\(path).compensation.input").map { ($0.location, $0.text, .compensation) }
            }
            if let event = step.event { refs.append(("\(path).event.equals", event.equals, .correlation)) }
            for (location, text, scope) in refs {
                let parsed: ValuePath
                do { parsed = try ValuePath(parsing: text) } catch {
                    errors.append(.init(path: location, message: error.description))
                    continue
                }
                if parsed.root == "event" {
                    errors.append(.init(path: location, message: "\(text): $.event is the record a trigger or an event wait reads; it is known only in triggers and in event.correlate (a wait's output is the record's value: $.steps.<id>.output)"))
                    continue
                }
                if scope == .correlation, parsed.root == "signals" || parsed.root == "item" || parsed.root == "index" {
                    errors.append(.init(path: location, message: "\(text): the value an instance waits for comes from $.input, $.steps.<id>.output or $.instance, which do not change while it waits"))
                    continue
                }
                if let signal = parsed.referencedSignal, !signalNames.contains(signal) {
                    let hint = closestMatch(to: signal, among: signalNames).map { " (did you mean '\($0)'?)" } ?? ""
                    errors.append(.init(path: location, message: "\(text) reads unknown signal '\(signal)'\(hint): declare it in signals, or add a signal step that waits for it"))
                    continue
                }
                if parsed.root == "item" || parsed.root == "index" {
                    if step.forEach == nil || scope == .items || scope == .condition {
                        let why = step.forEach == nil ? "only a for_each step has an item" : "$.item is only known inside each item's input"
                        errors.append(.init(path: location, message: "\(text): \(why)"))
                    }
                }
                guard let target = parsed.referencedStep else { continue }
                guard let t = index[target] else {
                    let hint = closestMatch(to: target, among: ids).map { " (did you mean '\($0)'?)" } ?? ""
                    errors.append(.init(path: location, message: "\(text) reads unknown step '\(target)'\(hint)"))
                    continue
                }
                if !reads[i].contains(t) { reads[i].append(t) }
                if scope == .compensation && t == i { continue }  // a compensation may read its own step's output
                if let ancestors, !ancestors.contains(ancestor: t, of: i) {
                    errors.append(
                        .init(path: location, message: "\(text) reads step '\(target)', which is not an ancestor of '\(step.id)': add it to depends_on (directly or through another step)"))
                }
            }
        }
        errors += triggerProblems
        guard errors.isEmpty, knownErrors.isEmpty else { return (nil, errors) }
        return (
            Workflow(
                definition: definition, index: index, dependencies: dependencies, dependents: dependents, topologicalOrder: order, conditions: conditions, reads: reads,
                triggerConditions: triggerConditions),
            errors
        )
    }

    enum ReadScope { case step, condition, items, compensation, correlation }

    /// A trigger's paths read the record (`$.event`) only.
    static func triggerErrors(_ definition: WorkflowDefinition, namespace: String) -> ([Condition?], [DefinitionError]) {
        var errors: [DefinitionError] = []
        var conditions: [Condition?] = []
        var topics: [String: Int] = [:]
        for (i, trigger) in definition.triggers.enumerated() {
            let path = "triggers[\(i)]"
            if let problem = engineTopicProblem(trigger.topic, namespace: namespace) { errors.append(.init(path: "\(path).topic", message: problem)) }
            if let first = topics[trigger.topic] {
                errors.append(.init(path: "\(path).topic", message: "triggers[\(first)] reads \(trigger.topic) already: use one trigger per topic (with a condition)"))
            } else {
                topics[trigger.topic] = i
            }
            var refs: [(String, String)] = [("\(path).instance_id", trigger.instanceID)]
            var condition: Condition?
            if let when = trigger.when {
                do {
                    let parsed = try Condition(parsing: when)
                    condition = parsed
                    refs += parsed.paths.map { ("\(path).when", $0.text) }
                } catch {
                    errors.append(.init(path: "\(path).when", message: "'\(when)' is not a valid condition: \(error.reason)"))
                }
            }
            conditions.append(condition)
            if let input = trigger.input { refs += InputTemplate.paths(in: input, at: "\(path).input").map { ($0.location, $0.text) } }
            for (location, text) in refs {
                do {
                    let parsed = try ValuePath(parsing: text)
                    if parsed.root != "event" {
                        errors.append(.init(path: location, message: "\(text): a trigger reads the record that starts the instance: $.event.key, $.event.value.<field>, $.event.headers.<name>, $.event.topic, ..."))
                    }
                } catch {
                    errors.append(.init(path: location, message: error.description))
                }
            }
        }
        return (conditions, errors)
    }

    /// Kahn's algorithm; stable (ready steps in definition order).
    static func topologicalOrder(dependencies: [[Int]]) -> [Int] {
        var remaining = dependencies.map(\.count)
        var dependents: [[Int]] = Array(repeating: [], count: dependencies.count)
        for (i, deps) in dependencies.enumerated() { for d in deps { dependents[d].append(i) } }
        var ready = (0..<dependencies.count).filter { remaining[$0] == 0 }
        var order: [Int] = []
        order.reserveCapacity(dependencies.count)
        var head = 0
        while head < ready.count {
            let n = ready[head]
            head += 1
            order.append(n)
            for m in dependents[n] {
                remaining[m] -= 1
                if remaining[m] == 0 { ready.append(m) }
            }
        }
        return order
    }

    /// Every cycle (one per strongly connected component), found without recursion (Tarjan's algorithm),
    /// each printed in execution order and closed: `a -> b -> a`.
    static func cycles(dependencies: [[Int]]) -> [[Int]] {
        let n = dependencies.count
        var indexOf = Array(repeating: -1, count: n)
        var low = Array(repeating: 0, count: n)
        var onStack = Array(repeating: false, count: n)
        var stack: [Int] = []
        var counter = 0
        var components: [[Int]] = []
        for start in 0..<n where indexOf[start] == -1 {
            var work: [(node: Int, edge: Int)] = [(start, 0)]
            indexOf[start] = counter; low[start] = counter; counter += 1
            stack.append(start); onStack[start] = true
            while let (node, edge) = work.last {
                if edge < dependencies[node].count {
                    work[work.count - 1].edge += 1
                    let next = dependencies[node][edge]
                    if indexOf[next] == -1 {
                        indexOf[next] = counter; low[next] = counter; counter += 1
                        stack.append(next); onStack[next] = true
                        work.append((next, 0))
                    } else if onStack[next] {
                        low[node] = min(low[node], indexOf[next])
                    }
                } else {
                    work.removeLast()
                    if let parent = work.last { low[parent.node] = min(low[parent.node], low[node]) }
                    if low[node] == indexOf[node] {
                        var component: [Int] = []
                        while let top = stack.popLast() {
                            onStack[top] = false
                            component.append(top)
                            if top == node { break }
                        }
                        if component.count > 1 { components.append(component) }
                    }
                }
            }
        }
        // Within each component, the shortest walk along dependencies from its first step back to it.
        return components.map { component in
            let members = Set(component)
            let first = component.min()!
            var parent: [Int: Int] = [first: first]
            var queue = [first]
            var head = 0
            var last = first
            search: while head < queue.count {
                let node = queue[head]
                head += 1
                for d in dependencies[node] where members.contains(d) {
                    if d == first { last = node; break search }
                    if parent[d] == nil {
                        parent[d] = node
                        queue.append(d)
                    }
                }
            }
            var path = [first]
            var node = last
            while node != first {
                path.append(node)
                node = parent[node]!
            }
            path.append(first)
            // [first, last, ..., first]: each step depends on the one before it, so this is execution order.
            return path
        }
    }
}

/// Ancestor sets as bit sets, built once in topological order: 10,000 steps take 12.5 MB at most.
struct AncestorSets {
    let words: Int
    var bits: [UInt64]

    init(order: [Int], dependencies: [[Int]]) {
        let n = dependencies.count
        words = (n + 63) / 64
        bits = Array(repeating: 0, count: n * words)
        for node in order {
            for d in dependencies[node] {
                bits[node * words + d / 64] |= 1 << UInt64(d % 64)
                for w in 0..<words { bits[node * words + w] |= bits[d * words + w] }
            }
        }
    }

    func contains(ancestor a: Int, of node: Int) -> Bool {
        bits[node * words + a / 64] & (1 << UInt64(a % 64)) != 0
    }
}

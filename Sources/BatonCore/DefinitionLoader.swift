import Foundation
import Yams

/// One problem in a definition: where (`steps[2].depends_on[0]`) and why.
public struct DefinitionError: Error, Sendable, Hashable, CustomStringConvertible {
    public var path: String
    public var message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Every problem found, not just the first.
public struct DefinitionErrors: Error, Sendable, CustomStringConvertible {
    public var source: String?
    public var errors: [DefinitionError]
    public init(source: String? = nil, errors: [DefinitionError]) {
        self.source = source
        self.errors = errors
    }
    public var description: String {
        errors.map { e in source.map { "\($0): \(e)" } ?? e.description }.joined(separator: "\n")
    }
}

public enum DefinitionLoader {
    public static let maxSteps = 10_000
    /// Nodes a YAML document may expand to (aliases included), against "billion laughs" documents.
    public static let maxNodes = 2_000_000

    /// Reads a JSON or YAML document, then checks it (see `WorkflowValidator`). Throws `DefinitionErrors`.
    /// `namespace` is the engine's, whose topics no trigger or event wait may read.
    public static func load(_ data: Data, source: String? = nil, namespace: String = WorkflowValidator.defaultNamespace) throws(DefinitionErrors) -> Workflow {
        let tree: JSON
        do {
            tree = try parseDocument(data)
        } catch {
            throw DefinitionErrors(source: source, errors: [DefinitionError(path: "", message: error.description)])
        }
        var reader = DefinitionReader()
        let definition = reader.workflow(tree)
        var errors = reader.errors
        var workflow: Workflow?
        if let definition {
            let (compiled, semantic) = WorkflowValidator.compile(definition, knownErrors: errors, namespace: namespace)
            errors += semantic
            workflow = compiled
        }
        guard errors.isEmpty, let workflow else {
            throw DefinitionErrors(source: source, errors: errors.isEmpty ? [DefinitionError(path: "", message: "not a workflow definition")] : errors)
        }
        return workflow
    }

    /// A JSON or YAML document as a tree. JSON is recognised by its first character; anything else is read as YAML.
    public static func parseDocument(_ data: Data) throws(DocumentError) -> JSON {
        guard data.count <= DocumentLimits.maxDefinitionBytes else {
            throw .tooLarge(bytes: data.count, limit: DocumentLimits.maxDefinitionBytes)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw .notUTF8 }
        if text.contains("\u{0}") { throw .notJSONOrYAML("it contains NUL bytes (a binary file?)") }
        if let depth = DocumentLimits.nestingExceeds(data, limit: DocumentLimits.maxNesting) {
            throw .tooDeep(depth: depth, limit: DocumentLimits.maxNesting)
        }
        let first = text.first { !$0.isWhitespace && $0 != "\u{FEFF}" }
        if first == "{" || first == "[" {
            do {
                return try JSON.parse(data)
            } catch let e as DocumentError {
                throw e
            } catch {
                throw .notJSON("\(error)")
            }
        }
        // Block-style YAML nests by indentation; bound it so that composing the tree cannot recurse without end.
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let indent = line.prefix { $0 == " " || $0 == "-" || $0 == "\t" || $0 == "?" }.count
            if indent > DocumentLimits.maxNesting * 4 {
                throw .tooDeep(depth: indent / 2, limit: DocumentLimits.maxNesting)
            }
        }
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw .notJSONOrYAML("\(error)")
        }
        guard let node else { throw .notJSONOrYAML("the document is empty") }
        var budget = maxNodes
        return try convert(node, budget: &budget, depth: 0)
    }

    static func convert(_ node: Node, budget: inout Int, depth: Int) throws(DocumentError) -> JSON {
        budget -= 1
        if budget < 0 { throw .notJSONOrYAML("the document expands to more than \(maxNodes) values (through aliases?)") }
        if depth > DocumentLimits.maxNesting { throw .tooDeep(depth: depth, limit: DocumentLimits.maxNesting) }
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                switch scalar.string {
                case "null", "Null", "NULL", "~", "": return .null
                case "true", "True", "TRUE": return .bool(true)
                case "false", "False", "FALSE": return .bool(false)
                default:
                    if let n = Double(scalar.string), scalar.string.first.map({ $0.isNumber || $0 == "-" || $0 == "+" || $0 == "." }) == true {
                        return .number(n)
                    }
                }
            }
            return .string(scalar.string)
        case .sequence(let seq):
            var out: [JSON] = []
            for child in seq { out.append(try convert(child, budget: &budget, depth: depth + 1)) }
            return .array(out)
        case .mapping(let map):
            var out: [String: JSON] = [:]
            for (key, value) in map {
                guard case .scalar(let k) = key else { throw .notJSONOrYAML("a mapping key is not a plain value") }
                out[k.string] = try convert(value, budget: &budget, depth: depth + 1)
            }
            return .object(out)
        case .alias:
            throw .notJSONOrYAML("an unresolved alias")
        }
    }
}

/// Turns a tree into a `WorkflowDefinition`, recording every problem with its path and going on.
struct DefinitionReader {
    var errors: [DefinitionError] = []

    mutating func fail(_ path: String, _ message: String) { errors.append(DefinitionError(path: path, message: message)) }

    static let workflowFields = ["workflow_id", "version", "description", "timeout", "on_failure", "retention", "signals", "triggers", "steps"]
    static let stepFields = [
        "id", "type", "worker", "depends_on", "input", "retry", "timeout", "heartbeat_timeout", "queue_timeout", "compensation", "when", "for_each",
        "assignee", "title", "on_timeout", "description", "event", "signal",
    ]
    static let triggerFields = ["topic", "when", "instance_id", "input"]
    static let eventFields = ["topic", "correlate", "equals", "ttl", "broadcast"]
    static let retryFields = ["max_attempts", "initial_backoff", "multiplier", "max_backoff", "jitter"]
    static let compensationFields = ["type", "worker", "input", "retry", "timeout"]
    static let failureFields = ["compensate", "alert", "then"]
    static let forEachFields = ["items", "max_concurrency"]
    static let onTimeoutFields = ["action", "escalate_to", "then"]

    /// The object at `path`, with unknown fields reported (with a did-you-mean where one is close).
    mutating func object(_ value: JSON, at path: String, fields: [String], what: String) -> [String: JSON]? {
        guard case .object(let o) = value else {
            fail(path, "expected \(what) (an object), found \(value.kind)")
            return nil
        }
        for key in o.keys.sorted() where !fields.contains(key) {
            let hint = closestMatch(to: key, among: fields).map { "did you mean '\($0)'? " } ?? ""
            fail(join(path, key), "unknown field; \(hint)known fields: \(fields.joined(separator: ", "))")
        }
        return o
    }

    func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func string(_ o: [String: JSON], _ key: String, at path: String, required: Bool = false) -> String? {
        guard let v = o[key] else {
            if required { fail(join(path, key), "missing (required)") }
            return nil
        }
        guard case .string(let s) = v, !s.isEmpty else {
            fail(join(path, key), "expected a non-empty string, found \(v.kind)")
            return nil
        }
        return s
    }

    mutating func int(_ o: [String: JSON], _ key: String, at path: String, range: ClosedRange<Int>) -> Int? {
        guard let v = o[key] else { return nil }
        guard let i = v.intValue, range.contains(i) else {
            fail(join(path, key), "expected a whole number from \(range.lowerBound) to \(range.upperBound), found \(v.kind == "a number" ? v.jsonText : v.kind)")
            return nil
        }
        return i
    }

    mutating func double(_ o: [String: JSON], _ key: String, at path: String, range: ClosedRange<Double>) -> Double? {
        guard let v = o[key] else { return nil }
        guard let d = v.numberValue, range.contains(d) else {
            fail(join(path, key), "expected a number from \(range.lowerBound) to \(range.upperBound), found \(v.kind == "a number" ? v.jsonText : v.kind)")
            return nil
        }
        return d
    }

    mutating func bool(_ o: [String: JSON], _ key: String, at path: String) -> Bool? {
        guard let v = o[key] else { return nil }
        guard let b = v.boolValue else {
            fail(join(path, key), "expected true or false, found \(v.kind)")
            return nil
        }
        return b
    }

    mutating func duration(_ o: [String: JSON], _ key: String, at path: String) -> Millis? {
        guard let v = o[key] else { return nil }
        guard case .string(let s) = v, let d = Millis.parse(s) else {
            let shown = v.stringValue.map { "'\($0)'" } ?? v.jsonText
            fail(join(path, key), "\(shown) is not a duration; write it as 500ms, 30s, 30m, 48h, 7d or 1h30m")
            return nil
        }
        guard d.value > 0 else {
            fail(join(path, key), "must be longer than 0")
            return nil
        }
        return d
    }

    mutating func enumValue<E: RawRepresentable & CaseIterable>(_ o: [String: JSON], _ key: String, at path: String, _ type: E.Type) -> E? where E.RawValue == String {
        guard let v = o[key] else { return nil }
        guard let s = v.stringValue, let e = E(rawValue: s) else {
            let names = E.allCases.map(\.rawValue)
            let hint = v.stringValue.flatMap { closestMatch(to: $0, among: names) }.map { " (did you mean '\($0)'?)" } ?? ""
            fail(join(path, key), "expected one of \(names.joined(separator: ", ")), found \(v.stringValue.map { "'\($0)'" } ?? v.kind)\(hint)")
            return nil
        }
        return e
    }

    mutating func workflow(_ tree: JSON) -> WorkflowDefinition? {
        guard let o = object(tree, at: "", fields: Self.workflowFields, what: "a workflow definition") else { return nil }
        let id = string(o, "workflow_id", at: "", required: true)
        if let id, !isIdentifier(id) { fail("workflow_id", "'\(id)' may only contain letters, digits, '_', '-' and '.'") }
        let version = int(o, "version", at: "", range: 1...1_000_000) ?? 1
        let description = string(o, "description", at: "")
        let timeout = duration(o, "timeout", at: "")
        let retention = duration(o, "retention", at: "")
        var policy = FailurePolicy()
        if let f = o["on_failure"], let fo = object(f, at: "on_failure", fields: Self.failureFields, what: "a failure policy") {
            policy.compensate = bool(fo, "compensate", at: "on_failure") ?? true
            policy.alert = bool(fo, "alert", at: "on_failure") ?? true
            policy.then = enumValue(fo, "then", at: "on_failure", FailurePolicy.Then.self) ?? .fail
        }
        var signals: [String] = []
        switch o["signals"] {
        case nil: break
        case .array(let a)?:
            for (i, v) in a.enumerated() {
                let path = "signals[\(i)]"
                guard let name = v.stringValue, !name.isEmpty else {
                    fail(path, "expected a signal name, found \(v.kind)")
                    continue
                }
                signalName(name, at: path)
                if signals.contains(name) { fail(path, "'\(name)' is listed twice") } else { signals.append(name) }
            }
        case let other?: fail("signals", "expected a list of signal names, found \(other.kind)")
        }
        var triggers: [TriggerDefinition] = []
        switch o["triggers"] {
        case nil: break
        case .array(let a)?:
            for (i, t) in a.enumerated() {
                let path = "triggers[\(i)]"
                guard let to = object(t, at: path, fields: Self.triggerFields, what: "a trigger") else { continue }
                let topic = string(to, "topic", at: path, required: true)
                topicName(topic, at: join(path, "topic"))
                guard let topic else { continue }
                triggers.append(
                    TriggerDefinition(
                        topic: topic, when: string(to, "when", at: path),
                        instanceID: string(to, "instance_id", at: path) ?? TriggerDefinition.defaultInstanceID, input: to["input"]))
            }
        case let other?: fail("triggers", "expected a list of triggers, found \(other.kind)")
        }
        var steps: [StepDefinition] = []
        switch o["steps"] {
        case nil: fail("steps", "missing (required): a list of steps")
        case .array(let a)?:
            if a.isEmpty { fail("steps", "a workflow needs at least one step") }
            if a.count > DefinitionLoader.maxSteps {
                fail("steps", "\(a.count) steps, more than the limit of \(DefinitionLoader.maxSteps)")
                return nil
            }
            for (i, s) in a.enumerated() {
                if let step = self.step(s, at: "steps[\(i)]") { steps.append(step) }
            }
        case let other?: fail("steps", "expected a list of steps, found \(other.kind)")
        }
        guard let id else { return nil }
        return WorkflowDefinition(
            workflowID: id, version: version, description: description, timeout: timeout, onFailure: policy, retention: retention, signals: signals,
            triggers: triggers, steps: steps)
    }

    /// A signal's name: what `baton signal ID NAME` and `$.signals.NAME` use.
    mutating func signalName(_ name: String, at path: String) {
        guard !isIdentifier(name) || name.contains(".") || name.utf8.count > 100 else { return }
        fail(path, "'\(name)' is not a signal name: use at most 100 letters, digits, '_' and '-'")
    }

    /// A business topic a trigger or an event wait reads: a valid Kafka topic name.
    mutating func topicName(_ name: String?, at path: String) {
        guard let name else { return }
        if !isIdentifier(name) || name.utf8.count > 249 || name == "." || name == ".." {
            fail(path, "'\(name)' is not a Kafka topic name: use at most 249 letters, digits, '_', '-' and '.'")
        }
    }

    /// A step type or worker names a worker pool, whose command topic is `<namespace>.commands.<pool>`: it must be
    /// a valid part of a Kafka topic name.
    mutating func poolName(_ name: String?, at path: String) {
        guard let name, !isIdentifier(name) || name.utf8.count > 180 else { return }
        fail(path, "'\(name)' names a worker pool (and its command topic): use at most 180 letters, digits, '_', '-' and '.'")
    }

    func isIdentifier(_ s: String) -> Bool {
        s.count <= 200 && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == ".") }
    }

    mutating func step(_ value: JSON, at path: String) -> StepDefinition? {
        guard let o = object(value, at: path, fields: Self.stepFields, what: "a step") else { return nil }
        let id = string(o, "id", at: path, required: true)
        if let id, !isIdentifier(id) || id.contains(".") {
            fail(join(path, "id"), "'\(id)' may only contain letters, digits, '_' and '-'")
        }
        let type = string(o, "type", at: path, required: true)
        let worker = string(o, "worker", at: path)
        poolName(type, at: join(path, "type"))
        poolName(worker, at: join(path, "worker"))
        var dependsOn: [String] = []
        switch o["depends_on"] {
        case nil: break
        case .array(let a)?:
            for (i, d) in a.enumerated() {
                if let s = d.stringValue { dependsOn.append(s) } else { fail("\(path).depends_on[\(i)]", "expected a step id, found \(d.kind)") }
            }
        case .string(let s)?: dependsOn = [s]
        case let other?: fail("\(path).depends_on", "expected a list of step ids, found \(other.kind)")
        }
        let retry = o["retry"].flatMap { retryPolicy($0, at: join(path, "retry"), defaults: .default) }
        let timeout = duration(o, "timeout", at: path)
        let heartbeatTimeout = duration(o, "heartbeat_timeout", at: path)
        if let heartbeatTimeout {
            if type == StepDefinition.humanTaskType {
                fail(join(path, "heartbeat_timeout"), "a human_task has no worker to send heartbeats; use timeout")
            } else if heartbeatTimeout >= (timeout ?? StepDefinition.defaultTimeout) {
                fail(join(path, "heartbeat_timeout"), "\(heartbeatTimeout) is not shorter than the step's timeout \(timeout ?? StepDefinition.defaultTimeout): it would never fire first")
            }
        }
        let queueTimeout = duration(o, "queue_timeout", at: path)
        if queueTimeout != nil, let type, StepDefinition.builtInTypes.contains(type) {
            fail(join(path, "queue_timeout"), "a \(type) step has no worker to wait for; its timeout counts from when it starts waiting")
        }
        var compensation: Compensation?
        if let c = o["compensation"], let co = object(c, at: join(path, "compensation"), fields: Self.compensationFields, what: "a compensation") {
            let cpath = join(path, "compensation")
            poolName(co["worker"]?.stringValue, at: join(cpath, "worker"))
            if let ctype = string(co, "type", at: cpath, required: true) {
                poolName(ctype, at: join(cpath, "type"))
                compensation = Compensation(
                    type: ctype, worker: string(co, "worker", at: cpath), input: co["input"],
                    retry: co["retry"].flatMap { retryPolicy($0, at: join(cpath, "retry"), defaults: .compensationDefault) },
                    timeout: duration(co, "timeout", at: cpath))
            }
        }
        let when = string(o, "when", at: path)
        var forEach: ForEach?
        if let f = o["for_each"] {
            let fpath = join(path, "for_each")
            if case .string(let items) = f {
                forEach = ForEach(items: items)
            } else if let fo = object(f, at: fpath, fields: Self.forEachFields, what: "a for_each (items and max_concurrency)") {
                if let items = string(fo, "items", at: fpath, required: true) {
                    forEach = ForEach(items: items, maxConcurrency: int(fo, "max_concurrency", at: fpath, range: 1...100_000))
                }
            }
        }
        var human: HumanTaskSpec?
        let assignee = string(o, "assignee", at: path)
        if type == StepDefinition.humanTaskType {
            if let assignee {
                if !(assignee.hasPrefix("role:") || assignee.hasPrefix("user:")) || assignee.split(separator: ":", maxSplits: 1).last?.isEmpty != false {
                    fail(join(path, "assignee"), "'\(assignee)' should name a role or a person, as role:credit_manager or user:alice")
                }
                var spec = HumanTaskSpec(assignee: assignee, title: string(o, "title", at: path))
                switch o["on_timeout"] {
                case nil: break
                case .string?:
                    spec.onTimeout = enumValue(o, "on_timeout", at: path, HumanTaskSpec.TimeoutAction.self) ?? .reject
                case let t?:
                    let tpath = join(path, "on_timeout")
                    if let to = object(t, at: tpath, fields: Self.onTimeoutFields, what: "a timeout action") {
                        spec.onTimeout = enumValue(to, "action", at: tpath, HumanTaskSpec.TimeoutAction.self) ?? .reject
                        spec.escalateTo = string(to, "escalate_to", at: tpath)
                        spec.afterEscalation = enumValue(to, "then", at: tpath, HumanTaskSpec.TimeoutAction.self) ?? .reject
                        if spec.afterEscalation == .escalate { fail(join(tpath, "then"), "after an escalation times out, the step can only reject or fail") }
                    }
                }
                if spec.onTimeout == .escalate && spec.escalateTo == nil {
                    fail(join(path, "on_timeout"), "escalate needs escalate_to, as {action: escalate, escalate_to: role:head_of_credit}")
                }
                human = spec
            } else {
                fail(join(path, "assignee"), "missing (required for a human_task): who decides, as role:credit_manager")
            }
        } else {
            for key in ["assignee", "title", "on_timeout"] where o[key] != nil {
                fail(join(path, key), "only human_task steps have \(key == "assignee" ? "an" : "a") \(key)")
            }
        }
        var event: EventWait?
        if type == StepDefinition.eventWaitType {
            let epath = join(path, "event")
            if let e = o["event"] {
                if let eo = object(e, at: epath, fields: Self.eventFields, what: "an event to wait for (topic, correlate, equals, ttl, broadcast)") {
                    let topic = string(eo, "topic", at: epath, required: true)
                    topicName(topic, at: join(epath, "topic"))
                    let equals = string(eo, "equals", at: epath, required: true)
                    if let topic, let equals {
                        event = EventWait(
                            topic: topic, correlate: string(eo, "correlate", at: epath) ?? EventWait.defaultCorrelate, equals: equals,
                            ttl: duration(eo, "ttl", at: epath), broadcast: bool(eo, "broadcast", at: epath) ?? false)
                    }
                }
            } else {
                fail(epath, "missing (required for a wait_for_event step): {topic, correlate, equals}, as {topic: payments.settled, correlate: $.event.value.order_id, equals: $.input.order_id}")
            }
        } else if o["event"] != nil {
            fail(join(path, "event"), "only wait_for_event steps have an event")
        }
        var signal: String?
        if type == StepDefinition.signalType {
            if let name = string(o, "signal", at: path, required: true) {
                signalName(name, at: join(path, "signal"))
                signal = name
            }
        } else if o["signal"] != nil {
            fail(join(path, "signal"), "only signal steps have a signal")
        }
        if type == StepDefinition.eventWaitType || type == StepDefinition.signalType {
            if o["timeout"] == nil {
                fail(join(path, "timeout"), "missing (required for a \(type ?? "") step): how long to wait before the step fails, as 10m or 48h")
            }
            for key in ["worker", "compensation", "heartbeat_timeout", "for_each"] where o[key] != nil {
                fail(join(path, key), "a \(type ?? "") step has no \(key == "for_each" ? "for_each: wait in one step per value" : key): nothing runs on a worker")
            }
        }
        guard let id, let type else { return nil }
        return StepDefinition(
            id: id, type: type, worker: worker, dependsOn: dependsOn, input: o["input"], retry: retry, timeout: timeout,
            heartbeatTimeout: heartbeatTimeout, compensation: compensation, when: when, forEach: forEach, humanTask: human, event: event, signal: signal,
            queueTimeout: queueTimeout)
    }

    mutating func retryPolicy(_ value: JSON, at path: String, defaults: RetryPolicy) -> RetryPolicy? {
        guard let o = object(value, at: path, fields: Self.retryFields, what: "a retry policy") else { return nil }
        var r = defaults
        r.maxAttempts = int(o, "max_attempts", at: path, range: 1...100) ?? r.maxAttempts
        r.initialBackoff = duration(o, "initial_backoff", at: path) ?? r.initialBackoff
        r.multiplier = double(o, "multiplier", at: path, range: 1...100) ?? r.multiplier
        r.maxBackoff = duration(o, "max_backoff", at: path) ?? r.maxBackoff
        r.jitter = double(o, "jitter", at: path, range: 0...1) ?? r.jitter
        if r.maxBackoff < r.initialBackoff {
            fail(join(path, "max_backoff"), "\(r.maxBackoff) is shorter than initial_backoff \(r.initialBackoff)")
        }
        return r
    }
}

/// The candidate nearest to `word` by edit distance, if close enough to be a likely typo.
public func closestMatch(to word: String, among candidates: some Collection<String>) -> String? {
    let a = Array(word.lowercased())
    guard !a.isEmpty, a.count < 100 else { return nil }
    func distance(_ other: String) -> Int {
        let b = Array(other.lowercased())
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
    var best: (String, Int)?
    for c in candidates.prefix(20_000) where abs(c.count - a.count) <= 3 {
        let d = distance(c)
        if best == nil || d < best!.1 { best = (c, d) }
    }
    guard let best, best.1 > 0 || word != best.0 else { return nil }
    return best.1 <= max(2, a.count / 3) ? best.0 : nil
}

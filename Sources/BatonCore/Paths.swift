/// A reference to a value, such as `$.input.order_id`, `$.steps.reserve.output.reservation_id` or
/// `$.item.sku`. Roots: `input` (the workflow input), `steps.<id>.output` (an earlier step's output; a
/// `for_each` step's output is the array of its items' outputs, in order), `item` and `index` (inside a
/// `for_each` step: the current element and its position), `instance.id` and `instance.workflow_id`.
public struct ValuePath: Hashable, Sendable, CustomStringConvertible {
    public enum Segment: Hashable, Sendable {
        case key(String)
        case index(Int)
    }

    public let segments: [Segment]
    public let text: String
    public var description: String { text }

    public static let roots = ["input", "steps", "item", "index", "instance", "signals", "event"]
    /// What a record read from a business topic offers under `$.event`.
    public static let eventFields = ["key", "value", "headers", "topic", "partition", "offset", "timestamp"]

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var text: String
        public var reason: String
        public var description: String { "'\(text)' is not a valid path: \(reason)" }
    }

    public init(parsing text: String) throws(ParseError) {
        self.text = text
        var chars = Substring(text)
        guard chars.hasPrefix("$.") || chars.hasPrefix("$[") else {
            throw ParseError(text: text, reason: "a path starts with '$.', as in $.input.order_id")
        }
        chars = chars.dropFirst()
        var segments: [Segment] = []
        while let c = chars.first {
            if c == "." {
                chars = chars.dropFirst()
                let name = chars.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }
                guard !name.isEmpty else { throw ParseError(text: text, reason: "a name is missing after '.'") }
                segments.append(.key(String(name)))
                chars = chars.dropFirst(name.count)
            } else if c == "[" {
                chars = chars.dropFirst()
                let digits = chars.prefix { $0.isASCII && $0.isNumber }
                guard !digits.isEmpty, digits.count < 10, let i = Int(digits), chars.dropFirst(digits.count).first == "]" else {
                    throw ParseError(text: text, reason: "an index is written [0], [1], ...")
                }
                segments.append(.index(i))
                chars = chars.dropFirst(digits.count + 1)
            } else {
                throw ParseError(text: text, reason: "unexpected '\(c)'")
            }
            if segments.count > DocumentLimits.maxNesting { throw ParseError(text: text, reason: "too many segments") }
        }
        guard case .key(let root)? = segments.first else { throw ParseError(text: text, reason: "a path starts with a name, as in $.input") }
        guard Self.roots.contains(root) else {
            let hint = closestMatch(to: root, among: Self.roots).map { " (did you mean '\($0)'?)" } ?? ""
            throw ParseError(text: text, reason: "unknown root '\(root)'\(hint); paths start with \(Self.roots.map { "$.\($0)" }.joined(separator: ", "))")
        }
        if root == "steps" {
            guard segments.count >= 3, case .key = segments[1], segments[2] == .key("output") else {
                throw ParseError(text: text, reason: "a step's value is referenced as $.steps.<step id>.output")
            }
        }
        if root == "signals" {
            guard segments.count >= 2, case .key = segments[1] else {
                throw ParseError(text: text, reason: "a signal's value is referenced as $.signals.<name>")
            }
        }
        if root == "event" {
            guard segments.count >= 2, case .key(let field) = segments[1], Self.eventFields.contains(field) else {
                throw ParseError(text: text, reason: "a record's parts are \(Self.eventFields.map { "$.event.\($0)" }.joined(separator: ", "))")
            }
        }
        if root == "instance" {
            guard segments.count == 2, segments[1] == .key("id") || segments[1] == .key("workflow_id") else {
                throw ParseError(text: text, reason: "only $.instance.id and $.instance.workflow_id exist")
            }
        }
        self.segments = segments
    }

    /// The step whose output this path reads, if any.
    public var referencedStep: String? {
        guard segments.count >= 2, segments[0] == .key("steps"), case .key(let id) = segments[1] else { return nil }
        return id
    }

    public var root: String { if case .key(let r) = segments[0] { r } else { "" } }

    /// The signal whose value this path reads, if any.
    public var referencedSignal: String? {
        guard segments.count >= 2, segments[0] == .key("signals"), case .key(let name) = segments[1] else { return nil }
        return name
    }

    /// The value the path points at, or nil when something along the way is missing.
    public func resolve(in context: PathContext) -> JSON? {
        var value: JSON
        var rest: ArraySlice<Segment>
        switch root {
        case "input":
            value = context.input
            rest = segments.dropFirst()
        case "steps":
            guard let id = referencedStep, let output = context.stepOutput(id) else { return nil }
            value = output
            rest = segments.dropFirst(3)
        case "item":
            guard let item = context.item else { return nil }
            value = item
            rest = segments.dropFirst()
        case "index":
            guard let index = context.index else { return nil }
            value = .number(Double(index))
            rest = segments.dropFirst()
        case "instance":
            return segments[1] == .key("id") ? .string(context.instanceID) : .string(context.workflowID)
        case "signals":
            guard let name = referencedSignal, let signal = context.signals?[name] else { return nil }
            value = signal
            rest = segments.dropFirst(2)
        case "event":
            guard let event = context.event else { return nil }
            value = event
            rest = segments.dropFirst()
        default:
            return nil
        }
        for segment in rest {
            switch (segment, value) {
            case (.key(let k), .object(let o)):
                guard let v = o[k] else { return nil }
                value = v
            case (.index(let i), .array(let a)):
                guard i < a.count else { return nil }
                value = a[i]
            default:
                return nil
            }
        }
        return value
    }
}

/// What paths are resolved against.
public struct PathContext: Sendable {
    public var instanceID: String
    public var workflowID: String
    public var input: JSON
    public var item: JSON?
    public var index: Int?
    public var stepOutput: @Sendable (String) -> JSON?
    /// The signals the instance received (`$.signals.<name>`): the last data of each.
    public var signals: [String: JSON]?
    /// A record from a business topic (`$.event`): `{key, value, headers, topic, partition, offset, timestamp}`.
    public var event: JSON?

    public init(
        instanceID: String, workflowID: String, input: JSON, item: JSON? = nil, index: Int? = nil, signals: [String: JSON]? = nil, event: JSON? = nil,
        stepOutput: @escaping @Sendable (String) -> JSON?
    ) {
        self.instanceID = instanceID
        self.workflowID = workflowID
        self.input = input
        self.item = item
        self.index = index
        self.signals = signals
        self.event = event
        self.stepOutput = stepOutput
    }

    /// The context of a record read from a business topic, for a trigger or an event wait: only `$.event` resolves.
    public static func record(_ event: JSON) -> PathContext {
        PathContext(instanceID: "", workflowID: "", input: .null, event: event, stepOutput: { _ in nil })
    }
}

/// A step's `input`: a JSON template in which every string that starts with `$.` is replaced by the value
/// at that path (null when it is missing). A string starting with `$$` stands for a literal `$`.
public enum InputTemplate {
    /// Every path in the template, with where it is (`input.order.id`).
    public static func paths(in template: JSON, at location: String = "input") -> [(location: String, text: String)] {
        var found: [(String, String)] = []
        var stack: [(JSON, String)] = [(template, location)]
        while let (value, where_) = stack.popLast() {
            switch value {
            case .string(let s) where s.hasPrefix("$") && !s.hasPrefix("$$"): found.append((where_, s))
            case .array(let a): for (i, v) in a.enumerated().reversed() { stack.append((v, "\(where_)[\(i)]")) }
            case .object(let o): for (k, v) in o.sorted(by: { $0.key > $1.key }) { stack.append((v, "\(where_).\(k)")) }
            default: break
            }
        }
        return found
    }

    /// Renders the template. Paths were checked at validation, so an unparsable one renders as null.
    public static func render(_ template: JSON, in context: PathContext) -> JSON {
        switch template {
        case .string(let s) where s.hasPrefix("$$"): return .string(String(s.dropFirst()))
        case .string(let s) where s.hasPrefix("$"):
            return (try? ValuePath(parsing: s))?.resolve(in: context) ?? .null
        case .array(let a): return .array(a.map { render($0, in: context) })
        case .object(let o): return .object(o.mapValues { render($0, in: context) })
        default: return template
        }
    }
}

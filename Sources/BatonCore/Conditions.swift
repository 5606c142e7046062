/// A step's `when`: a boolean expression over paths and literals.
///
///     $.input.amount > 1000 && $.steps.check.output.risk != "high"
///
/// Operators: `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers, and strings by code point), `&&`/`and`,
/// `||`/`or`, `!`/`not`, parentheses. Literals: numbers, "strings" or 'strings', true, false, null.
/// A path alone means "is truthy" (not null, false, 0, "" or empty). A missing value is null.
public indirect enum Condition: Sendable, Hashable, CustomStringConvertible {
    case literal(JSON)
    case path(ValuePath)
    case not(Condition)
    case and(Condition, Condition)
    case or(Condition, Condition)
    case compare(Condition, Comparison, Condition)

    public enum Comparison: String, Sendable, Hashable { case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=" }

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public var description: String {
        switch self {
        case .literal(let j): j.jsonText
        case .path(let p): p.text
        case .not(let c): "!(\(c))"
        case .and(let a, let b): "(\(a) && \(b))"
        case .or(let a, let b): "(\(a) || \(b))"
        case .compare(let a, let op, let b): "\(a) \(op.rawValue) \(b)"
        }
    }

    /// Every path the condition reads.
    public var paths: [ValuePath] {
        var out: [ValuePath] = []
        var stack = [self]
        while let c = stack.popLast() {
            switch c {
            case .literal: break
            case .path(let p): out.append(p)
            case .not(let x): stack.append(x)
            case .and(let a, let b), .or(let a, let b), .compare(let a, _, let b): stack.append(contentsOf: [b, a])
            }
        }
        return out
    }

    public func evaluate(in context: PathContext) -> Bool { value(in: context).isTruthy }

    func value(in context: PathContext) -> JSON {
        switch self {
        case .literal(let j): return j
        case .path(let p): return p.resolve(in: context) ?? .null
        case .not(let c): return .bool(!c.value(in: context).isTruthy)
        case .and(let a, let b): return .bool(a.value(in: context).isTruthy && b.value(in: context).isTruthy)
        case .or(let a, let b): return .bool(a.value(in: context).isTruthy || b.value(in: context).isTruthy)
        case .compare(let a, let op, let b):
            let l = a.value(in: context), r = b.value(in: context)
            switch op {
            case .eq: return .bool(l == r)
            case .ne: return .bool(l != r)
            default:
                let ordered: Bool? =
                    switch (l, r) {
                    case (.number(let x), .number(let y)): op == .lt ? x < y : op == .le ? x <= y : op == .gt ? x > y : x >= y
                    case (.string(let x), .string(let y)): op == .lt ? x < y : op == .le ? x <= y : op == .gt ? x > y : x >= y
                    default: nil
                    }
                return .bool(ordered ?? false)
            }
        }
    }

    public static let maxDepth = 32

    public init(parsing text: String) throws(ParseError) {
        var parser = ConditionParser(tokens: try ConditionParser.tokenize(text))
        let c = try parser.parseOr(depth: 0)
        if let extra = parser.peek { throw ParseError(reason: "unexpected '\(extra)' after the end of the condition") }
        self = c
    }
}

struct ConditionParser {
    enum Token: Equatable, CustomStringConvertible {
        case path(String), number(Double), string(String), word(String), op(String), lparen, rparen
        var description: String {
            switch self {
            case .path(let p): p
            case .number(let n): "\(n)"
            case .string(let s): "\"\(s)\""
            case .word(let w): w
            case .op(let o): o
            case .lparen: "("
            case .rparen: ")"
            }
        }
    }

    var tokens: [Token]
    var position = 0
    init(tokens: [Token]) { self.tokens = tokens }

    var peek: Token? { position < tokens.count ? tokens[position] : nil }
    mutating func next() -> Token? {
        defer { position += 1 }
        return peek
    }

    static func tokenize(_ text: String) throws(Condition.ParseError) -> [Token] {
        var tokens: [Token] = []
        let chars = Array(text)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c.isWhitespace { i += 1; continue }
            if c == "(" { tokens.append(.lparen); i += 1; continue }
            if c == ")" { tokens.append(.rparen); i += 1; continue }
            if c == "$" {
                var j = i + 1
                while j < chars.count, chars[j].isLetter || chars[j].isNumber || "._-[]$".contains(chars[j]) { j += 1 }
                tokens.append(.path(String(chars[i..<j])))
                i = j
                continue
            }
            if c == "\"" || c == "'" {
                var j = i + 1
                var s = ""
                while j < chars.count, chars[j] != c {
                    if chars[j] == "\\", j + 1 < chars.count { j += 1 }
                    s.append(chars[j])
                    j += 1
                }
                guard j < chars.count else { throw .init(reason: "a string starting at character \(i + 1) is not closed") }
                tokens.append(.string(s))
                i = j + 1
                continue
            }
            if c.isNumber || (c == "-" && i + 1 < chars.count && chars[i + 1].isNumber) {
                var j = i + 1
                while j < chars.count, chars[j].isNumber || chars[j] == "." { j += 1 }
                guard let n = Double(String(chars[i..<j])) else { throw .init(reason: "'\(String(chars[i..<j]))' is not a number") }
                tokens.append(.number(n))
                i = j
                continue
            }
            if c.isLetter {
                var j = i
                while j < chars.count, chars[j].isLetter || chars[j] == "_" { j += 1 }
                tokens.append(.word(String(chars[i..<j])))
                i = j
                continue
            }
            let two = i + 1 < chars.count ? String(chars[i...i + 1]) : ""
            if ["==", "!=", "<=", ">=", "&&", "||"].contains(two) {
                tokens.append(.op(two))
                i += 2
                continue
            }
            if "<>!".contains(c) {
                tokens.append(.op(String(c)))
                i += 1
                continue
            }
            throw .init(reason: "unexpected '\(c)' at character \(i + 1)")
        }
        return tokens
    }

    mutating func parseOr(depth: Int) throws(Condition.ParseError) -> Condition {
        guard depth < Condition.maxDepth else { throw .init(reason: "nested more than \(Condition.maxDepth) levels deep") }
        var left = try parseAnd(depth: depth + 1)
        while peek == .op("||") || peek == .word("or") {
            position += 1
            left = .or(left, try parseAnd(depth: depth + 1))
        }
        return left
    }

    mutating func parseAnd(depth: Int) throws(Condition.ParseError) -> Condition {
        var left = try parseNot(depth: depth + 1)
        while peek == .op("&&") || peek == .word("and") {
            position += 1
            left = .and(left, try parseNot(depth: depth + 1))
        }
        return left
    }

    mutating func parseNot(depth: Int) throws(Condition.ParseError) -> Condition {
        guard depth < Condition.maxDepth else { throw .init(reason: "nested more than \(Condition.maxDepth) levels deep") }
        if peek == .op("!") || peek == .word("not") {
            position += 1
            return .not(try parseNot(depth: depth + 1))
        }
        let left = try parsePrimary(depth: depth + 1)
        if case .op(let o)? = peek, let op = Condition.Comparison(rawValue: o) {
            position += 1
            return .compare(left, op, try parsePrimary(depth: depth + 1))
        }
        return left
    }

    mutating func parsePrimary(depth: Int) throws(Condition.ParseError) -> Condition {
        guard let token = next() else { throw .init(reason: "the condition ends where a value was expected") }
        switch token {
        case .lparen:
            let inner = try parseOr(depth: depth + 1)
            guard next() == .rparen else { throw .init(reason: "a '(' is not closed") }
            return inner
        case .path(let p):
            do { return .path(try ValuePath(parsing: p)) } catch { throw .init(reason: error.description) }
        case .number(let n): return .literal(.number(n))
        case .string(let s): return .literal(.string(s))
        case .word("true"): return .literal(.bool(true))
        case .word("false"): return .literal(.bool(false))
        case .word("null"): return .literal(.null)
        default: throw .init(reason: "unexpected '\(token)' where a value was expected")
        }
    }
}

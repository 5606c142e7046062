import Foundation

/// A JSON value: workflow inputs, step inputs and outputs, and definition documents before they are typed.
public enum JSON: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    public subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { a } else { nil } }
    public var objectValue: [String: JSON]? { if case .object(let o) = self { o } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var numberValue: Double? { if case .number(let n) = self { n } else { nil } }
    /// A whole number, when this is a number without a fractional part.
    public var intValue: Int? {
        guard case .number(let n) = self, n.rounded() == n, abs(n) < 9e15 else { return nil }
        return Int(n)
    }

    /// What kind of value this is, for error messages.
    public var kind: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    /// Truthiness for conditions: null, false, 0, "" and empty collections are false.
    public var isTruthy: Bool {
        switch self {
        case .null: false
        case .bool(let b): b
        case .number(let n): n != 0
        case .string(let s): !s.isEmpty
        case .array(let a): !a.isEmpty
        case .object(let o): !o.isEmpty
        }
    }
}

extension JSON: Codable {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSON].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSON].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n):
            if n.rounded() == n, abs(n) < 9e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(Dictionary(elements) { $1 }) }
    public init(nilLiteral: ()) { self = .null }
}

extension JSON {
    /// Compact JSON text with sorted keys (stable, so equal values encode to equal bytes).
    public func encoded() -> Data { written.data }

    /// The size of `encoded()`, in bytes (without copying the text into `Data`).
    public var encodedSize: Int { written.bytes.count }

    private var written: JSONTextWriter {
        var writer = JSONTextWriter()
        writer.value(self)
        return writer
    }

    public var jsonText: String { String(decoding: encoded(), as: UTF8.self) }

    /// Parses JSON text. Nesting deeper than `maxDepth` is refused before parsing, so no input can
    /// exhaust the stack.
    public static func parse(_ data: Data, maxDepth: Int = DocumentLimits.maxNesting) throws -> JSON {
        // The hand-written reader takes well-formed JSON within the engine's nesting limit in one pass; anything
        // else goes the slow way, which says exactly what is wrong.
        if maxDepth == DocumentLimits.maxNesting, let value = try? JSONTextReader.read(data, { try $0.value() }) { return value }
        if let depth = DocumentLimits.nestingExceeds(data, limit: maxDepth) {
            throw DocumentError.tooDeep(depth: depth, limit: maxDepth)
        }
        do {
            return try JSONDecoder().decode(JSON.self, from: data)
        } catch let error as DecodingError {
            throw DocumentError.notJSON(describe(error))
        }
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context): return (context.underlyingError.map { "\($0)" } ?? context.debugDescription)
        default: return "\(error)"
        }
    }
}

public enum DocumentError: Error, Sendable, Equatable, CustomStringConvertible {
    case notUTF8
    case notJSON(String)
    case notJSONOrYAML(String)
    case tooDeep(depth: Int, limit: Int)
    case tooLarge(bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .notUTF8: "not UTF-8 text"
        case .notJSON(let why): "not valid JSON: \(why)"
        case .notJSONOrYAML(let why): "neither JSON nor YAML: \(why)"
        case .tooDeep(let depth, let limit): "nested more than \(limit) levels deep (at least \(depth)); definitions and payloads are refused past \(limit)"
        case .tooLarge(let bytes, let limit): "\(bytes) bytes, more than the limit of \(limit)"
        }
    }
}

public enum DocumentLimits {
    /// How deeply a definition or payload may nest objects and arrays.
    public static let maxNesting = 128
    /// The largest definition document accepted.
    public static let maxDefinitionBytes = 16 << 20

    /// Scans brackets outside strings (JSON and YAML flow style) without recursion; returns the depth
    /// reached when it exceeds `limit`, else nil.
    static func nestingExceeds(_ data: Data, limit: Int) -> Int? {
        var depth = 0
        var inDouble = false
        var inSingle = false
        var escaped = false
        for byte in data {
            if inDouble {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inDouble = false }
                continue
            }
            if inSingle {
                if byte == UInt8(ascii: "'") { inSingle = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inDouble = true
            case UInt8(ascii: "'"): inSingle = depth > 0  // quotes only delimit strings inside flow collections
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > limit { return depth }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
            default: break
            }
        }
        return nil
    }
}

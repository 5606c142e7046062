import Foundation

/// Writes JSON text into a byte buffer without going through `Encodable`: the hot path's records (state
/// snapshots, commands, results, outputs) are written by hand with it. The text is what `JSONEncoder` writes
/// with `.sortedKeys` and `.withoutEscapingSlashes`, byte for byte, as long as the caller writes an object's
/// keys in sorted order (the property tests compare the two): readers cannot tell which wrote a record.
public struct JSONTextWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    /// Whether the next value or key needs a comma before it (something was written since the last `{` or `[`).
    private var needsComma = false

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public var data: Data { Data(bytes) }

    /// Bytes written as they are (a header before the JSON text), outside the JSON grammar.
    public mutating func raw(_ prefix: [UInt8]) { bytes.append(contentsOf: prefix) }

    private mutating func separate() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
    }

    public mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
    }

    public mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    public mutating func beginArray() {
        separate()
        bytes.append(UInt8(ascii: "["))
        needsComma = false
    }

    public mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    /// An object key (a literal that needs no escaping); the value written next is its value.
    public mutating func key(_ key: StaticString) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    /// An object key that may need escaping (a key of a JSON object value).
    public mutating func key(_ key: String) {
        string(key)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    public mutating func null() {
        separate()
        bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        needsComma = true
    }

    public mutating func bool(_ value: Bool) {
        separate()
        if value { bytes.append(contentsOf: [0x74, 0x72, 0x75, 0x65]) } else { bytes.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65]) }
        needsComma = true
    }

    public mutating func int(_ value: Int) { int64(Int64(value)) }

    public mutating func int64(_ value: Int64) {
        separate()
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        if magnitude < 10 {
            bytes.append(UInt8(ascii: "0") &+ UInt8(magnitude))
        } else {
            var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            var count = 0
            withUnsafeMutableBytes(of: &digits) { buffer in
                while magnitude > 0 {
                    buffer[19 - count] = UInt8(ascii: "0") &+ UInt8(magnitude % 10)
                    magnitude /= 10
                    count += 1
                }
                bytes.append(contentsOf: buffer[(20 - count)...])
            }
        }
        needsComma = true
    }

    /// A number as `JSON.encode(to:)` writes it: whole numbers below 9e15 as integers, others as `JSONEncoder`
    /// writes a `Double` (a value JSON cannot hold, infinite or NaN, as null).
    public mutating func number(_ value: Double) {
        if value.rounded() == value, abs(value) < 9e15 { return int64(Int64(value)) }
        guard value.isFinite else { return null() }
        separate()
        var text = value.description
        // Swift writes 1e-07 and 1e+20; JSONEncoder the same, but never a trailing ".0" for whole numbers.
        if text.hasSuffix(".0") { text.removeLast(2) }
        bytes.append(contentsOf: text.utf8)
        needsComma = true
    }

    public mutating func string(_ value: String) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            var start = 0
            for i in 0..<utf8.count {
                let b = utf8[i]
                guard b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") else { continue }
                if start < i { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i])) }
                start = i + 1
                bytes.append(UInt8(ascii: "\\"))
                switch b {
                case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\"))
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    bytes.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xF)]])
                }
            }
            if start < utf8.count { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...])) }
        }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    public mutating func value(_ json: JSON) {
        switch json {
        case .null: null()
        case .bool(let b): bool(b)
        case .number(let n): number(n)
        case .string(let s): string(s)
        case .array(let items):
            beginArray()
            for item in items { value(item) }
            endArray()
        case .object(let fields):
            beginObject()
            for (k, v) in fields.sorted(by: { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }) {
                key(k)
                value(v)
            }
            endObject()
        }
    }

    /// A dictionary of strings as a JSON object with sorted keys.
    public mutating func object(_ fields: [String: String]) {
        beginObject()
        for (k, v) in fields.sorted(by: { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }) {
            key(k)
            string(v)
        }
        endObject()
    }

    public mutating func strings(_ values: [String]) {
        beginArray()
        for v in values { string(v) }
        endArray()
    }
}

/// Why a JSON text could not be read by `JSONTextReader`, and where (a byte offset).
public struct JSONTextError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var offset: Int
    public init(_ reason: String, at offset: Int) {
        self.reason = reason
        self.offset = offset
    }
    public var description: String { "\(reason) at byte \(offset)" }
}

/// An object's key as `JSONTextReader` met it: its bytes in the text being read (valid only during the call
/// that gets it), matched against literals in a `switch` without making a `String` (`case "attempt":`).
public struct JSONKey {
    let raw: UnsafeRawBufferPointer
    /// The key with its escapes resolved, when it had any (then `raw` is not used).
    let unescaped: String?

    public var string: String { unescaped ?? String(decoding: raw, as: UTF8.self) }

    public static func ~= (pattern: StaticString, key: JSONKey) -> Bool {
        if let unescaped = key.unescaped { return unescaped == pattern.description }
        let n = pattern.utf8CodeUnitCount
        guard n == key.raw.count else { return false }
        guard n > 0, let base = key.raw.baseAddress else { return n == 0 }
        return memcmp(base, pattern.utf8Start, n) == 0
    }
}

/// A pull reader of JSON text: the hot path's records are read field by field into their types, in one pass
/// and without building a tree or going through `Decodable`. It is strict: anything unusual (an integer
/// written as 1.0, a missing field, a wrong type, nesting past `DocumentLimits.maxNesting`) is an error, and
/// the callers then read the record again with `JSONDecoder`, which either accepts it or says exactly what is
/// wrong. So the fast path changes no decision, only the time it takes.
public struct JSONTextReader: ~Copyable {
    private let base: UnsafeRawBufferPointer
    private var i = 0
    private var depth = 0

    private init(_ base: UnsafeRawBufferPointer) { self.base = base }

    /// Reads one JSON value from `data` with `body`, which must consume it whole; only whitespace may follow.
    public static func read<T>(_ data: Data, _ body: (inout JSONTextReader) throws -> T) throws -> T {
        try data.withUnsafeBytes { raw in
            var reader = JSONTextReader(raw)
            let value = try body(&reader)
            reader.skipWhitespace()
            guard reader.i == raw.count else { throw JSONTextError("text after the value", at: reader.i) }
            return value
        }
    }

    private func fail(_ reason: String) -> JSONTextError { JSONTextError(reason, at: i) }

    private mutating func skipWhitespace() {
        while i < base.count {
            switch base[i] {
            case 0x20, 0x0A, 0x0D, 0x09: i += 1
            default: return
            }
        }
    }

    private mutating func peek() throws -> UInt8 {
        skipWhitespace()
        guard i < base.count else { throw fail("unexpected end") }
        return base[i]
    }

    private mutating func expect(_ byte: UInt8) throws {
        guard try peek() == byte else { throw fail("expected '\(Character(Unicode.Scalar(byte)))'") }
        i += 1
    }

    private mutating func literal(_ text: StaticString) throws {
        let n = text.utf8CodeUnitCount
        guard i + n <= base.count else { throw fail("unexpected end") }
        for k in 0..<n where base[i + k] != text.utf8Start[k] { throw fail("invalid literal") }
        i += n
    }

    private mutating func enter() throws {
        depth += 1
        if depth > DocumentLimits.maxNesting { throw fail("nested more than \(DocumentLimits.maxNesting) levels deep") }
    }

    /// Reads an object, calling `field` with each key; `field` must read or `skip()` the value.
    public mutating func object(_ field: (JSONKey, inout JSONTextReader) throws -> Void) throws {
        try expect(UInt8(ascii: "{"))
        try enter()
        if try peek() == UInt8(ascii: "}") {
            i += 1
            depth -= 1
            return
        }
        while true {
            guard try peek() == UInt8(ascii: "\"") else { throw fail("expected a key") }
            let key = try rawKey()
            try expect(UInt8(ascii: ":"))
            try field(key, &self)
            let next = try peek()
            i += 1
            if next == UInt8(ascii: "}") { break }
            guard next == UInt8(ascii: ",") else { throw JSONTextError("expected ',' or '}'", at: i - 1) }
        }
        depth -= 1
    }

    /// Reads an array, calling `element` for each of its values.
    public mutating func array(_ element: (inout JSONTextReader) throws -> Void) throws {
        try expect(UInt8(ascii: "["))
        try enter()
        if try peek() == UInt8(ascii: "]") {
            i += 1
            depth -= 1
            return
        }
        while true {
            try element(&self)
            let next = try peek()
            i += 1
            if next == UInt8(ascii: "]") { break }
            guard next == UInt8(ascii: ",") else { throw JSONTextError("expected ',' or ']'", at: i - 1) }
        }
        depth -= 1
    }

    /// Consumes a null if one comes next.
    public mutating func null() throws -> Bool {
        guard try peek() == UInt8(ascii: "n") else { return false }
        try literal("null")
        return true
    }

    public mutating func bool() throws -> Bool {
        switch try peek() {
        case UInt8(ascii: "t"):
            try literal("true")
            return true
        case UInt8(ascii: "f"):
            try literal("false")
            return false
        default: throw fail("expected a boolean")
        }
    }

    public mutating func string() throws -> String {
        guard try peek() == UInt8(ascii: "\"") else { throw fail("expected a string") }
        return try rawString()
    }

    public mutating func strings() throws -> [String] {
        var out: [String] = []
        try array { out.append(try $0.string()) }
        return out
    }

    public mutating func stringObject() throws -> [String: String] {
        var out: [String: String] = [:]
        try object { key, r in out[key.string] = try r.string() }
        return out
    }

    public mutating func int() throws -> Int { Int(try int64()) }

    /// An integer written without a fraction or an exponent (others are left to JSONDecoder).
    public mutating func int64() throws -> Int64 {
        _ = try peek()
        let start = i
        var negative = false
        if i < base.count, base[i] == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        var value: Int64 = 0
        var digits = 0
        while i < base.count, base[i] >= UInt8(ascii: "0"), base[i] <= UInt8(ascii: "9") {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(base[i] - UInt8(ascii: "0")))
            guard !o1, !o2 else { throw JSONTextError("integer out of range", at: start) }
            value = a
            digits += 1
            i += 1
        }
        guard digits > 0, !(digits > 1 && base[start + (negative ? 1 : 0)] == UInt8(ascii: "0")) else { throw JSONTextError("expected an integer", at: start) }
        if i < base.count, base[i] == UInt8(ascii: ".") || base[i] == UInt8(ascii: "e") || base[i] == UInt8(ascii: "E") {
            throw JSONTextError("expected an integer", at: start)
        }
        return negative ? -value : value
    }

    /// Any JSON value.
    public mutating func value() throws -> JSON {
        switch try peek() {
        case UInt8(ascii: "{"):
            var fields: [String: JSON] = [:]
            try object { key, r in fields[key.string] = try r.value() }
            return .object(fields)
        case UInt8(ascii: "["):
            var items: [JSON] = []
            try array { items.append(try $0.value()) }
            return .array(items)
        case UInt8(ascii: "\""): return .string(try rawString())
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool(try bool())
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        default: return .number(try number())
        }
    }

    /// A value where null means absent (as `decodeIfPresent` reads it): nil for null.
    public mutating func optionalValue() throws -> JSON? {
        if try null() { return Optional<JSON>.none }
        return try value()
    }

    /// Skips any value, checking it as `value()` would without building it.
    public mutating func skip() throws {
        switch try peek() {
        case UInt8(ascii: "{"): try object { _, r in try r.skip() }
        case UInt8(ascii: "["): try array { try $0.skip() }
        case UInt8(ascii: "\""): _ = try rawKey()
        case UInt8(ascii: "t"), UInt8(ascii: "f"): _ = try bool()
        case UInt8(ascii: "n"): try literal("null")
        default: _ = try number()
        }
    }

    /// A string at `i` as a key: its bytes when it has no escapes (checked as `rawString` checks them).
    private mutating func rawKey() throws -> JSONKey {
        let start = i
        var j = i + 1
        while j < base.count {
            let b = base[j]
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b < 0x20 || b >= 0x80 { break }
            j += 1
        }
        if j < base.count, base[j] == UInt8(ascii: "\"") {
            i = j + 1
            return JSONKey(raw: UnsafeRawBufferPointer(rebasing: base[(start + 1)..<j]), unescaped: nil)
        }
        return JSONKey(raw: UnsafeRawBufferPointer(start: nil, count: 0), unescaped: try rawString())
    }

    private mutating func number() throws -> Double {
        let start = i
        if i < base.count, base[i] == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        var whole: Int64 = 0
        while i < base.count, base[i] >= UInt8(ascii: "0"), base[i] <= UInt8(ascii: "9") {
            if i - intStart < 18 { whole = whole * 10 + Int64(base[i] - UInt8(ascii: "0")) }
            i += 1
        }
        let intDigits = i - intStart
        guard intDigits > 0, !(intDigits > 1 && base[intStart] == UInt8(ascii: "0")) else { throw JSONTextError("invalid number", at: start) }
        var simple = intDigits <= 15
        if i < base.count, base[i] == UInt8(ascii: ".") {
            simple = false
            i += 1
            let fracStart = i
            while i < base.count, base[i] >= UInt8(ascii: "0"), base[i] <= UInt8(ascii: "9") { i += 1 }
            guard i > fracStart else { throw JSONTextError("invalid number", at: start) }
        }
        if i < base.count, base[i] == UInt8(ascii: "e") || base[i] == UInt8(ascii: "E") {
            simple = false
            i += 1
            if i < base.count, base[i] == UInt8(ascii: "+") || base[i] == UInt8(ascii: "-") { i += 1 }
            let expStart = i
            while i < base.count, base[i] >= UInt8(ascii: "0"), base[i] <= UInt8(ascii: "9") { i += 1 }
            guard i > expStart else { throw JSONTextError("invalid number", at: start) }
        }
        if simple { return base[start] == UInt8(ascii: "-") ? -Double(whole) : Double(whole) }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: base[start..<i]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw JSONTextError("invalid number", at: start) }
        return value
    }

    /// A string literal at `i` (its opening quote), its escapes resolved; invalid UTF-8 is an error.
    private mutating func rawString() throws -> String {
        let start = i
        i += 1
        let contentStart = i
        var escaped = false
        var high: UInt8 = 0
        while true {
            guard i < base.count else { throw JSONTextError("unterminated string", at: start) }
            let b = base[i]
            high |= b
            if b == UInt8(ascii: "\"") { break }
            if b < 0x20 { throw fail("control character in a string") }
            if b == UInt8(ascii: "\\") {
                escaped = true
                i += 2
                continue
            }
            i += 1
        }
        guard i < base.count else { throw JSONTextError("unterminated string", at: start) }
        let content = UnsafeRawBufferPointer(rebasing: base[contentStart..<i])
        i += 1
        if !escaped {
            // ASCII (ids, keys, most values) cannot be invalid: decode it without the validating initializer.
            if high < 0x80 { return String(decoding: content, as: UTF8.self) }
            guard let s = String(validating: content, as: UTF8.self) else { throw JSONTextError("invalid UTF-8 in a string", at: start) }
            return s
        }
        return try unescape(content, at: start)
    }

    private func unescape(_ content: UnsafeRawBufferPointer, at start: Int) throws -> String {
        var out: [UInt8] = []
        out.reserveCapacity(content.count)
        var k = 0
        func hex4(_ at: Int) throws -> UInt32 {
            guard at + 4 <= content.count else { throw JSONTextError("invalid escape", at: start) }
            var v: UInt32 = 0
            for j in at..<(at + 4) {
                let c = content[j]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw JSONTextError("invalid escape", at: start)
                }
                v = v << 4 | d
            }
            return v
        }
        while k < content.count {
            let b = content[k]
            guard b == UInt8(ascii: "\\") else {
                out.append(b)
                k += 1
                continue
            }
            guard k + 1 < content.count else { throw JSONTextError("invalid escape", at: start) }
            let e = content[k + 1]
            k += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4(k)
                k += 4
                if (0xD800..<0xDC00).contains(scalar) {
                    // A high surrogate must be followed by an escaped low one.
                    guard k + 6 <= content.count, content[k] == UInt8(ascii: "\\"), content[k + 1] == UInt8(ascii: "u") else {
                        throw JSONTextError("unpaired surrogate in a string", at: start)
                    }
                    let low = try hex4(k + 2)
                    guard (0xDC00..<0xE000).contains(low) else { throw JSONTextError("unpaired surrogate in a string", at: start) }
                    k += 6
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let s = Unicode.Scalar(scalar) else { throw JSONTextError("unpaired surrogate in a string", at: start) }
                UTF8.encode(s) { out.append($0) }
            default: throw JSONTextError("invalid escape", at: start)
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw JSONTextError("invalid UTF-8 in a string", at: start) }
        return s
    }
}

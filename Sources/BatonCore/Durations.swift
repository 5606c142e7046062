import Foundation

/// A length of time in whole milliseconds, written as `500ms`, `30s`, `30m`, `48h`, `7d` or combined (`1h30m`).
public struct Millis: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var value: Int64
    public init(_ value: Int64) { self.value = value }

    public static func milliseconds(_ v: Int64) -> Millis { Millis(v) }
    public static func seconds(_ v: Int64) -> Millis { Millis(v * 1000) }
    public static func minutes(_ v: Int64) -> Millis { Millis(v * 60_000) }
    public static func hours(_ v: Int64) -> Millis { Millis(v * 3_600_000) }
    public static func days(_ v: Int64) -> Millis { Millis(v * 86_400_000) }

    public static func < (a: Millis, b: Millis) -> Bool { a.value < b.value }

    public init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(Int64.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }

    static let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]

    /// Parses `30m`, `48h`, `500ms`, `1h30m`. Nil for anything else (no sign, no fractions, no bare number).
    public static func parse(_ text: String) -> Millis? {
        var total: Int64 = 0
        var rest = Substring(text.trimmingCharacters(in: .whitespacesAndNewlines))
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, digits.count <= 12, let n = Int64(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            let unitText = rest.prefix { $0.isASCII && $0.isLetter }
            guard let unit = units.first(where: { $0.0 == unitText }) else { return nil }
            rest = rest.dropFirst(unitText.count)
            let (product, overflow) = n.multipliedReportingOverflow(by: unit.1)
            guard !overflow else { return nil }
            total += product
        }
        return Millis(total)
    }

    public var description: String {
        if value == 0 { return "0s" }
        var rest = value
        var parts: [String] = []
        for (name, size) in Self.units.reversed() where rest >= size {
            if name == "ms" && !parts.isEmpty && rest == 0 { break }
            parts.append("\(rest / size)\(name)")
            rest %= size
        }
        return parts.joined()
    }
}

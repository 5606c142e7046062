import Foundation

/// librdkafka properties for every client, read from a file of `key=value` lines: how Baton reaches a
/// cluster that needs more than an address (`security.protocol`, `ssl.*`, `sasl.*`, `client.rack`, ...).
/// Blank lines and lines starting with `#` or `!` are ignored; whitespace around keys and values is trimmed.
/// Properties that Baton's guarantees depend on are refused, so that a file cannot quietly turn off
/// transactions or read uncommitted records.
public enum KafkaPropertiesFile {
    /// Set by Baton itself: changing them would break exactly-once processing or the consumer groups, or has
    /// an option of its own.
    public static let reserved: [String: String] = [
        "bootstrap.servers": "use --brokers or BATON_BROKERS",
        "metadata.broker.list": "use --brokers or BATON_BROKERS",
        "group.id": "Baton names its consumer groups",
        "transactional.id": "Baton names its transactional producers",
        "isolation.level": "Baton reads only committed records",
        "enable.auto.commit": "Baton commits offsets in its transactions",
        "enable.auto.offset.store": "Baton commits offsets in its transactions",
        "enable.idempotence": "Baton's producers are idempotent",
        "acks": "Baton's producers wait for all in-sync replicas",
        "request.required.acks": "Baton's producers wait for all in-sync replicas",
        "enable.partition.eof": "Baton relies on partition EOF where it reads to the end",
        "log.queue": "Baton routes librdkafka's logs through its own queue",
        "fetch.wait.max.ms": "use --fetch-wait or BATON_FETCH_WAIT",
        "group.instance.id": "use --instance-id or BATON_INSTANCE_ID, different for each process",
    ]

    public struct LoadError: Error, CustomStringConvertible {
        public var path: String
        public var line: Int?
        public var reason: String
        public var description: String { "\(path)\(line.map { ":\($0)" } ?? ""): \(reason)" }
    }

    /// Reads the file at `path`; every bad line is reported, each with its number.
    public static func load(path: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LoadError(path: path, line: nil, reason: "cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw LoadError(path: path, line: nil, reason: "not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws -> [String: String] {
        var properties: [String: String] = [:]
        var errors: [LoadError] = []
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix("!") { continue }
            func fail(_ reason: String) { errors.append(LoadError(path: path, line: index + 1, reason: reason)) }
            guard let equals = line.firstIndex(of: "=") else {
                fail("expected key=value, got '\(line)'")
                continue
            }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if key.isEmpty {
                fail("a value without a key")
            } else if let why = reserved[key] {
                fail("'\(key)' cannot be set here: \(why)")
            } else if properties[key] != nil {
                fail("'\(key)' is set twice")
            } else {
                properties[key] = value
            }
        }
        if let first = errors.first {
            guard errors.count > 1 else { throw first }
            throw LoadError(path: path, line: nil, reason: "\(errors.count) errors:\n" + errors.map { "  \($0)" }.joined(separator: "\n"))
        }
        return properties
    }
}

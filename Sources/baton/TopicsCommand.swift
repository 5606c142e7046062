import ArgumentParser
import BatonKafka
import BatonRuntime
import BatonTopics
import Foundation
import Logging
import ServiceLifecycle

struct Topics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the engine's declared topics (built in; the files of topics/).",
        subcommands: [Apply.self, Check.self])

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the declared topics that are missing; report drift in those that exist.",
            discussion: """
                Never deletes a topic, alters a config or changes a partition count. Topics keyed by instance id \
                keep the partition count they were created with: changing it would separate instances from their \
                history. Exits 1 when drift is found.
                """)

        @OptionGroup var connection: ConnectionOptions
        @Option(help: "Folder of topic specs (default: those built into baton, the files of topics/ in its source).") var topics: String?
        @Option(help: "Replication factor for created topics (default: each spec's, else the broker's default).")
        var replicationFactor: Int?

        func run() async throws {
            let specs = try loadSpecs(topics)
            let logger = connection.makeLogger("baton.topics")
            let admin = try KafkaAdmin(configuration: connection.clientConfiguration, logger: logger)
            let applier = TopicApplier(admin: admin, namespace: connection.resolvedNamespace, replicationFactor: replicationFactor, logger: logger)
            let report = try await applier.apply(specs)
            print(report)
            if !report.drift.isEmpty {
                throw CLIFailure("drift found in \(Set(report.drift.map(\.topic)).count) topic(s); nothing was changed")
            }
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check the topic specs without contacting Kafka.")
        @Option(help: "Folder of topic specs (default: those built into baton, the files of topics/ in its source).") var topics: String?
        @Option(help: "Namespace used to print full topic names.") var namespace: String = "baton"

        func run() throws {
            for spec in try loadSpecs(topics) {
                let configs = spec.configs.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                print("\(spec.topicName(namespace: namespace))  partitions=\(spec.partitions) key=\(spec.key.rawValue) \(configs)")
            }
        }
    }
}

/// The topic specs of a folder, or those built into baton (nil).
func loadSpecs(_ path: String? = nil) throws -> [TopicSpec] {
    do {
        guard let path else { return try TopicSpecLoader.builtIn() }
        return try TopicSpecLoader.load(directory: URL(fileURLWithPath: path))
    } catch let error as TopicSpecErrors {
        throw CLIFailure("invalid topic specs:\n\(error)")
    }
}

struct KafkaCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Check that the brokers answer and that the engine's topics are there as declared.",
        discussion: """
            Compares each declared topic of the namespace with its spec (partition count, configs such as \
            cleanup.policy), as `topics apply` does, and changes nothing. Exits 1 when a topic is missing or drifted, \
            naming each and why. Other topics of the namespace (worker pools' command topics) are listed.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Folder of topic specs (default: those built into baton, the files of topics/ in its source).") var topics: String?

    func run() async throws {
        let specs = try loadSpecs(topics)
        let logger = connection.makeLogger("baton.check")
        let admin = try KafkaAdmin(configuration: connection.clientConfiguration, logger: logger)
        let metadata = try await admin.metadata()
        print("librdkafka \(librdkafkaVersion); \(metadata.brokerCount) broker(s) at \(connection.resolvedBrokers)")
        let namespace = connection.resolvedNamespace
        let inspection = try await TopicInspector(admin: admin, namespace: namespace).inspect(specs, scope: .declared)
        print(inspection)
        let declared = Set(specs.map { $0.topicName(namespace: namespace) })
        for topic in metadata.topics.values.filter({ $0.name.hasPrefix(namespace + ".") && !declared.contains($0.name) }).sorted(by: { $0.name < $1.name }) {
            print("other     \(topic.name)  partitions=\(topic.partitionCount)")
        }
        if !inspection.isSound {
            throw CLIFailure(
                "namespace \(namespace): \(inspection.missing.count) topic(s) missing, \(Set(inspection.drift.map(\.topic)).count) drifted:\n"
                    + inspection.problems.map { "  \($0)" }.joined(separator: "\n"))
        }
    }
}

/// Runs a process's services on its engine topics: checks them first (refusing to run on missing or drifted
/// ones), then runs the services with `TopicWatch` beside them. On a loss the watch throws, which cancels the
/// group (not a graceful stop: a partition finishing its transaction would write state read from topics that
/// are gone into whatever now has their names). Either way the process exits with `EngineTopicGuard.exitStatus`,
/// after the guard's critical log naming each topic and why.
func runServices(_ services: [any Service], topics: EngineTopicGuard, logger: Logger) async throws {
    do {
        try await topics.checkAtStart()
        try await runServices(services + [TopicWatch(topics: topics)], logger: logger)
    } catch is EngineTopicsError {
        throw ExitCode(EngineTopicGuard.exitStatus)
    }
}

/// Watches the engine topics a process uses (`EngineTopicGuard.watch`) beside its services. It throws on a
/// confirmed loss, which ends the group (`runServices(_:topics:logger:)`); on a graceful shutdown it ends.
struct TopicWatch: Service {
    let topics: EngineTopicGuard

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await topics.watch() }
    }
}

import ArgumentParser
import BatonKafka
import BatonTopics
import Foundation

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
        commandName: "check", abstract: "Check that the brokers answer, and list the engine's topics there.")
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let logger = connection.makeLogger("baton.check")
        let admin = try KafkaAdmin(configuration: connection.clientConfiguration, logger: logger)
        let metadata = try await admin.metadata()
        print("librdkafka \(librdkafkaVersion); \(metadata.brokerCount) broker(s) at \(connection.resolvedBrokers)")
        let prefix = connection.resolvedNamespace + "."
        for topic in metadata.topics.values.filter({ $0.name.hasPrefix(prefix) }).sorted(by: { $0.name < $1.name }) {
            print("  \(topic.name)  partitions=\(topic.partitionCount)")
        }
    }
}

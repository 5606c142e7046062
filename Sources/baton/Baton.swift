import ArgumentParser
import BatonKafka
import Foundation
import Logging

@main
struct Baton: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton",
        abstract: "Baton: a Kafka-native workflow and saga engine.",
        subcommands: [
            Validate.self, Graph.self, Definitions.self, Start.self, Status.self, Tasks.self, Instances.self,
            CoordinatorCommand.self, WorkersCommand.self, Demo.self, Bench.self, Topics.self, KafkaCheck.self,
        ])
}

/// Options every command that talks to Kafka takes.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Kafka bootstrap servers, host:port[,host:port] (default: $BATON_BROKERS, else 127.0.0.1:9092).")
    var brokers: String?

    @Option(help: "Prefix of every engine topic name, as in <namespace>.events (default: $BATON_NAMESPACE, else baton).")
    var namespace: String?

    @Option(help: "How long a request to the brokers may take before it fails, in seconds.")
    var timeout: Int = 10

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .error

    var environment: [String: String] { ProcessInfo.processInfo.environment }
    var resolvedBrokers: KafkaBrokers { brokers.map(KafkaBrokers.init) ?? .fromEnvironment(environment) }
    var resolvedNamespace: String { namespace ?? environment["BATON_NAMESPACE"] ?? "baton" }

    func makeLogger(_ label: String) -> Logger {
        bootstrapLogging()
        var logger = Logger(label: label)
        logger.logLevel = logLevel
        return logger
    }

    var clientConfiguration: KafkaClientConfiguration {
        var c = KafkaClientConfiguration(brokers: resolvedBrokers)
        c.clientID = "baton-cli"
        c.requestTimeout = .seconds(timeout)
        return c
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

private let loggingBootstrapped: Void = LoggingSystem.bootstrap(StreamLogHandler.standardError)
func bootstrapLogging() { _ = loggingBootstrapped }

/// A failure the CLI reports as one clear line and a non-zero exit, without a stack of wrappers.
struct CLIFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

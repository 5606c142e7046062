import ArgumentParser
import BatonCore
import BatonRuntime
import BatonTriggers
import Logging
import Metrics

struct TriggersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "triggers",
        abstract: "Run the triggers: business topics that definitions name turned into starts and into records for waiting instances.",
        discussion: """
            Reads every topic that the latest version of a workflow has a trigger on, and every topic a wait_for_event \
            step of any registered version waits on, in the consumer group <namespace>.triggers (run several: they \
            share the partitions). Each record that matches a trigger starts an instance; each record on a topic that \
            steps wait on goes to the mailbox of its correlation value. Both are written to the events topic in one \
            Kafka transaction with the consumed offsets, so a record starts one instance also across crashes and \
            redeliveries. A record that cannot be read goes to the dead-letter topic with its reason. A topic read \
            for the first time is read from its beginning. See docs/operations.md.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "At most this many records of a partition go into one transaction.") var maxBatch = 1000
    @Option(help: ArgumentHelp(
        "A member that sends no heartbeat for this long (killed, frozen) is removed from the group, and its partitions go to the others, such as 10s.",
        valueName: "duration"))
    var sessionTimeout = "10s"
    @Option(help: ArgumentHelp(
        "A member that does not poll for this long leaves the group; also how long a rebalance waits for the members to rejoin, such as 30s.",
        valueName: "duration"))
    var maxPollInterval = "30s"
    @OptionGroup var membership: MembershipOptions
    @OptionGroup var monitoring: MonitoringOptions

    func validate() throws {
        guard maxBatch >= 1 else { throw ValidationError("--max-batch: \(maxBatch) must be at least 1") }
        for (name, text) in [("--session-timeout", sessionTimeout), ("--max-poll-interval", maxPollInterval)] {
            guard let value = Millis.parse(text), value.value >= 1000 else { throw ValidationError("\(name): '\(text)' is not a duration of at least 1s, such as 10s") }
        }
    }

    func run() async throws {
        let logger = connection.makeLogger("baton.triggers", default: .info)
        var configuration = TriggerConfiguration(client: try membership.apply(to: connection.clientConfiguration), names: connection.names)
        configuration.maxBatch = maxBatch
        configuration.sessionTimeout = .milliseconds(Millis.parse(sessionTimeout)?.value ?? 10_000)
        configuration.maxPollInterval = .milliseconds(Millis.parse(maxPollInterval)?.value ?? 30_000)
        configuration.gapRereads = connection.resolvedGapRereads
        let monitored = try monitoring.bootstrap(serviceName: "baton-triggers", logger: logger)
        configuration.metricsFactory = MetricsSystem.factory
        let service = TriggerService(configuration: configuration, logger: logger)
        let topics = try EngineTopicGuard(client: configuration.client, names: configuration.names, role: .triggers, logger: logger)
        try await runServices(monitored.services(component: "triggers", ready: { service.isReady && topics.isSound }, main: [service]), topics: topics, logger: logger)
    }
}

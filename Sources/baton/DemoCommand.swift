import ArgumentParser
import BatonClient
import BatonCore
import BatonKafka
import BatonTopics
import BatonWire
import Foundation

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the order-fulfillment example end to end and print each instance's result.",
        discussion: """
            In a fresh namespace: declares the topics, registers examples/order-fulfillment.yaml, starts a coordinator \
            and the example workers as child processes, starts a few orders (one whose card is declined, to show \
            retries, compensation, the alert and the suspension), and prints what became of each.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The definition to run.") var definition = "examples/order-fulfillment.yaml"
    @Option(help: "Orders to start (one more is declined).") var orders = 4

    func run() async throws {
        let logger = connection.makeLogger("baton.demo")
        let namespace = connection.namespace ?? "demo-\(UUID().uuidString.prefix(8).lowercased())"
        let names = TopicNames(namespace: namespace)
        let admin = try KafkaAdmin(configuration: connection.clientConfiguration, logger: logger)
        _ = try await TopicApplier(admin: admin, namespace: namespace, replicationFactor: 1, logger: logger).apply(try loadSpecs())
        let client = try BatonClient(client: connection.clientConfiguration, names: names, logger: logger)
        let workflow: Workflow
        do {
            workflow = try await client.register(document: try Data(contentsOf: URL(fileURLWithPath: definition)), source: definition)
        } catch let errors as DefinitionErrors {
            throw CLIFailure(errors.description)
        }
        try await InstanceWatcher.watching(client: connection.clientConfiguration, names: names, logger: logger) { watcher in
            let children = ChildProcesses()
            children.stopOnInterrupt()
            try children.ensureKeys()
            let common = ["--namespace", namespace] + connection.childArguments
            try children.spawn("coordinator", ["coordinator"] + common)
            try children.spawn("workers", ["example-workers"] + common)
            print("namespace \(namespace): a coordinator and the example workers are running (logs in \(children.logDirectory.path))")

            var ids: [String] = []
            for i in 1...(orders + 1) {
                let declined = i == orders + 1
                let order = declined ? "order-\(i)-fail-charge" : "order-\(i)"
                let input: JSON = [
                    "order_id": .string(order), "items": [["sku": "book", "qty": .number(Double(i))]], "amount": .number(Double(20 * i)),
                    "currency": "EUR", "email": .string("customer\(i)@example.com"), "address": "1 Main Street",
                ]
                ids.append(try await client.start(workflowID: workflow.id, input: input, instanceID: order))
                print("started \(order)\(declined ? " (its card will be declined)" : "")")
            }
            let ended: Set<InstanceStatus> = [.completed, .failed, .suspended, .cancelled]
            let orderIDs = ids
            let finished = await withProgress(every: .seconds(1)) {
                let statuses = orderIDs.map { watcher.status($0) }
                let done = statuses.count { $0.map(ended.contains) ?? false }
                return done == orderIDs.count ? nil : "waiting for the orders: \(done) of \(orderIDs.count) done (\(statuses.compactMap { $0?.rawValue }.joined(separator: ", ")))"
            } _: {
                await watcher.wait(for: Set(orderIDs), toBe: ended, timeout: .seconds(120))
            }
            print("")
            for id in ids {
                if let state = watcher.state(id) {
                    print(StatusReport.render(InstanceView(state, workflow: workflow)))
                } else {
                    print("\(id): no state seen")
                }
                print("")
            }
            let alerts = try await alertsFor(client: client, names: names)
            for alert in alerts { print("alert to the on-call: [\(alert.alert.severity.rawValue)] \(alert.alert.instanceID ?? "engine"): \(alert.alert.message)") }
            children.stopAll()
            await client.close()
            if !finished { throw CLIFailure("not every order finished within 120 s; see the logs in \(children.logDirectory.path)") }
        }
    }

    func alertsFor(client: BatonClient, names: TopicNames) async throws -> [AlertRecord] {
        var alerts: [AlertRecord] = []
        try await client.readAll(names.alerts) { m in
            if let value = m.value, let alert = try? Wire.decode(AlertRecord.self, from: value) { alerts.append(alert) }
        }
        return alerts
    }
}

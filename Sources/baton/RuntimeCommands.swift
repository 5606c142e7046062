import ArgumentParser
import BatonClient
import BatonCoordinator
import BatonCore
import BatonExamples
import BatonKafka
import BatonOperatorTools
import BatonReadModel
import BatonRuntime
import BatonWire
import BatonWorker
import Foundation
import Logging
import Metrics
import NIOHTTP1
import ServiceLifecycle
import UnixSignals

extension ConnectionOptions {
    var names: TopicNames { TopicNames(namespace: resolvedNamespace) }
    /// Runs `body` with a client and closes it whatever happens; a client's refusal (`ClientError`) becomes
    /// the command's one-line error.
    func withClient<T>(signer: AuthoritySigner? = nil, _ body: (BatonClient) async throws -> T) async throws -> T {
        let client = try BatonClient(client: clientConfiguration, names: names, signer: signer, logger: makeLogger("baton.client"))
        do {
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw (error as? ClientError).map { CLIFailure($0) } ?? error
        }
    }
}

/// How long a graceful shutdown may take before the services are cancelled: each service's own stop is bounded
/// within it (a coordinator's partitions get 12 s, a worker's commands 10 s, then closes of at most 5 s), so this
/// only ends what did not (docs/deploy.md: every process exits within 30 s of SIGTERM, broker or not).
let gracefulShutdownLimit = Duration.seconds(20)

/// Runs services until SIGINT or SIGTERM, then shuts them down gracefully; after `gracefulShutdownLimit`, cancels them.
func runServices(_ services: [any Service], logger: Logger) async throws {
    var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    configuration.maximumGracefulShutdownDuration = gracefulShutdownLimit
    try await ServiceGroup(configuration: configuration).run()
}

struct CoordinatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run a saga coordinator: a member of the coordinators' group on the events topic.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: ArgumentHelp("How long a finished instance stays queryable, when its definition has no retention, such as 7d or 12h.", valueName: "duration"))
    var retention: String = "7d"
    @Option(help: ArgumentHelp("The largest record the brokers take, in bytes (Kafka's max.message.bytes, less a margin).", valueName: "bytes"))
    var maxRecordBytes = 990_000
    @Option(help: ArgumentHelp("How far this coordinator's clock may be from the clocks of the records it reads: further ahead, its timers are held (they would fire early) and it is not ready; further behind, it says so (docs/operations.md#clocks).", valueName: "duration"))
    var clockSkewLimit: String = "30s"
    @Flag(help: "For one release while a namespace moves to signed records: apply decisions, claims, operator actions and signals without a signature (docs/operations.md).")
    var acceptUnsigned = false
    @Flag(help: "For one release while workers move to result tokens: apply results and heartbeats without a token (docs/operations.md).")
    var acceptMissingTokens = false
    @OptionGroup var membership: MembershipOptions
    @OptionGroup var monitoring: MonitoringOptions

    func run() async throws {
        let logger = connection.makeLogger("baton.coordinator", default: .info)
        guard let retention = Millis.parse(retention), retention.value > 0 else {
            throw CLIFailure("--retention: '\(self.retention)' is not a duration such as 7d, 12h or 30m")
        }
        guard maxRecordBytes >= 64 << 10 else { throw CLIFailure("--max-record-bytes: \(maxRecordBytes) is too small (at least 65536)") }
        guard let clockSkewLimit = Millis.parse(clockSkewLimit), clockSkewLimit.value >= 1000 else {
            throw CLIFailure("--clock-skew-limit: '\(self.clockSkewLimit)' is not a duration of at least 1s, such as 30s or 2m")
        }
        var security: CoordinatorSecurity
        do { security = try KeySettings.fromEnvironment().loadSecurity() } catch { throw CLIFailure("\(error)") }
        security.acceptUnsigned = acceptUnsigned
        security.acceptMissingTokens = acceptMissingTokens
        logger.info(
            "keys", metadata: ["trusted": "\(security.trustedKeys.ids.joined(separator: ", "))", "accept-unsigned": "\(acceptUnsigned)", "accept-missing-tokens": "\(acceptMissingTokens)"])
        var configuration = CoordinatorConfiguration(client: try membership.apply(to: connection.clientConfiguration), names: connection.names, security: security)
        configuration.retention = retention
        configuration.maxRecordBytes = maxRecordBytes
        configuration.clockSkewLimit = clockSkewLimit
        configuration.gapRereads = connection.resolvedGapRereads
        let monitored = try monitoring.bootstrap(serviceName: "baton-coordinator", logger: logger)
        configuration.metricsFactory = MetricsSystem.factory
        configuration.tracer = monitored.tracer
        let coordinator = Coordinator(configuration: configuration, logger: logger)
        let topics = try EngineTopicGuard(client: configuration.client, names: configuration.names, role: .coordinator, logger: logger)
        try await runServices(
            monitored.services(component: "coordinator", ready: { coordinator.isReady && topics.isSound }, main: [coordinator]), topics: topics, logger: logger)
    }
}

struct WorkersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "example-workers",
        abstract: "Run the example workers (stand-ins for inventory, payments, shipping, ...) for the examples.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Worker pools to run (default: all the examples').") var pool: [String] = []
    @Option(help: "Commands each pool handles at once.") var concurrency = 64
    @OptionGroup var membership: MembershipOptions
    @OptionGroup var monitoring: MonitoringOptions

    func run() async throws {
        let logger = connection.makeLogger("baton.workers", default: .info)
        let pools = pool.isEmpty ? ExampleWorkers.handlers.keys.sorted() : pool
        let monitored = try monitoring.bootstrap(serviceName: "baton-workers", logger: logger)
        var workers: [StepWorker] = []
        for name in pools {
            guard let handler = ExampleWorkers.handlers[name] else {
                throw CLIFailure("no example worker for pool '\(name)'; known: \(ExampleWorkers.handlers.keys.sorted().joined(separator: ", "))")
            }
            var configuration = WorkerConfiguration(client: try membership.apply(to: connection.clientConfiguration), names: connection.names, pool: name)
            configuration.gapRereads = connection.resolvedGapRereads
            configuration.concurrency = concurrency
            configuration.metricsFactory = MetricsSystem.factory
            configuration.tracer = monitored.tracer
            workers.append(StepWorker(configuration: configuration, logger: logger, handler: handler))
        }
        let all = StepWorkers(workers)
        let topics = try EngineTopicGuard(
            client: try connection.clientConfiguration, names: connection.names, role: .worker, others: pools.map { connection.names.commands($0) }, logger: logger)
        try await runServices(monitored.services(component: "worker", ready: { all.isReady && topics.isSound }, main: [all]), topics: topics, logger: logger)
    }
}

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a workflow instance; prints its id.",
        discussion: """
            Waits until a coordinator has the instance, then says whether this start created it. Starting an id that \
            exists with the same workflow, version and input changes nothing and says so (exit 0); starting it with \
            another workflow, version or input is refused as a conflict (exit 3) and shows how it was started.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The workflow id.") var workflow: String
    @Option(help: "The input, as JSON.") var input: String = "{}"
    @Option(help: "A definition version (default: the latest).") var version: Int?
    @Option(help: "The instance id (default: a new UUID).") var id: String?
    @Option(help: "Seconds to wait for a coordinator to take the start; 0 sends it and does not wait (with a server: it waits up to 10 s).") var wait = 30
    @OptionGroup var server: ServerOptions

    func run() async throws {
        let value: JSON
        do { value = try JSON.parse(Data(input.utf8)) } catch { throw CLIFailure("--input is not valid JSON: \(error)") }
        if let api = try server.api() { return try await start(through: api, input: value) }
        try await connection.withClient { client in
            // A start for a workflow the coordinators do not know would only reach the dead-letter topic.
            guard wait > 0 else {
                guard try await client.definition(workflow, version: version) != nil else {
                    let what = version.map { "version \($0) of '\(workflow)' is not" } ?? "no workflow '\(workflow)' is"
                    throw ClientError(.notFound, "\(what) registered on \(connection.names.definitions); register it first: baton definitions register FILE")
                }
                print(try await client.start(workflowID: workflow, version: version, input: value, instanceID: id))
                return
            }
            switch try await client.startAndWait(
                workflowID: workflow, version: version, input: value, instanceID: id, timeout: .seconds(wait), requireRegistered: true)
            {
            case .created(let state):
                print(state.instanceID)
            case .exists(let state):
                print(state.instanceID)
                FileHandle.standardError.write(Data("'\(state.instanceID)' exists already with the same workflow and input (\(state.status.rawValue)); nothing changed\n".utf8))
            case .conflict(let state):
                // A conflict's exit status: the id is taken by an instance started with something else.
                let message = "conflict: '\(state.instanceID)' exists already as \(state.workflowID) v\(state.version) (\(state.status.rawValue)), started with another workflow, version or input: \(state.input.jsonText)"
                FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
                throw ExitCode(ClientError.Kind.conflict.exitCode)
            }
        }
    }

    /// Through `baton serve` (`POST /v1/instances`): one request to a process whose consumers are running
    /// already, where the command alone starts Kafka clients and reads partitions to their end first.
    func start(through api: APIClient, input: JSON) async throws {
        var body: [String: JSON] = ["workflow_id": .string(workflow), "input": input]
        if let version { body["version"] = .number(Double(version)) }
        if let id { body["instance_id"] = .string(id) }
        let (status, answer) = try await api.call(.POST, "/v1/instances\(wait > 0 ? "?wait=true" : "")", body: .object(body))
        guard let started = answer["instance_id"]?.stringValue else { throw CLIFailure("the server's answer names no instance_id") }
        switch status {
        case 200:
            print(started)
            FileHandle.standardError.write(Data("'\(started)' exists already with the same workflow and input; nothing changed\n".utf8))
        case 202 where wait > 0:
            throw CLIFailure(
                ClientError(
                    .notAppliedInTime, "sent the start of '\(started)', but no coordinator took it within the server's wait: is one running? "
                        + "`baton status \(started)` shows whether it started since"))
        default:
            print(started)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show an instance: every step's state, attempts, outputs and errors.")
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var server: ServerOptions
    @Argument(help: "The instance id.") var id: String
    @Flag(help: "Print the state as JSON.") var json = false

    func run() async throws {
        let view: InstanceView
        if let api = try server.api() {
            let (_, body) = try await api.call(.GET, "/v1/instances/\(APIClient.escape(id))")
            guard let instance = body["instance"] else { throw CLIFailure("the server's answer has no instance") }
            view = try JSONDecoder().decode(InstanceView.self, from: instance.encoded())
        } else {
            // Only what the instance needs: its partition of the state and outputs topics, and its definition.
            let id = self.id
            let found = try await connection.withClient { client -> InstanceView? in
                guard let state = try await client.status(instanceID: id) else { return nil }
                return InstanceView(state, workflow: try await client.definition(state.workflowID, version: state.version))
            }
            guard let found else { throw CLIFailure(ClientError(.notFound, "no instance '\(id)' on \(connection.names.state) (yet)")) }
            view = found
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(view), as: UTF8.self))
        } else {
            print(StatusReport.render(view))
        }
    }
}

enum StatusReport {
    static func render(_ view: InstanceView) -> String {
        var lines = ["\(view.instanceID)  \(view.workflowID) v\(view.version)  \(view.status.rawValue)"]
        if let reason = view.reason { lines.append("  reason: \(reason)") }
        if let output = view.output { lines.append("  output: \(output.jsonText)") }
        for step in view.steps {
            var line = "  \(step.id): \(step.status.rawValue)"
            if step.attempt > 0 { line += ", attempt \(step.attempt)" }
            if let items = step.items, items.count > 1 { line += ", \(items.count) items" }
            let compensated = step.compensation?.status == .done || (step.items ?? []).contains { $0.compensation?.status == .done }
            if compensated { line += ", compensated" }
            if let e = step.error ?? step.items?.compactMap(\.error).last { line += "  error: \(e)" }
            if let o = step.output { line += "  output: \(o.jsonText)" }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }
}

struct Definitions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Register workflow definitions.", subcommands: [Register.self])

    struct Register: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check and register definitions (a version, once registered, is immutable).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Definition files.") var files: [String]

        func run() async throws {
            try await connection.withClient { client in
                for file in files {
                    let data: Data
                    do { data = try Data(contentsOf: URL(fileURLWithPath: file)) } catch { throw CLIFailure("\(file): cannot read: \(error.localizedDescription)") }
                    do {
                        let registration = try await client.registration(document: data, source: file)
                        let workflow = registration.workflow
                        switch registration.outcome {
                        case .registered: print("\(file): registered \(workflow.id) v\(workflow.version)")
                        case .unchanged: print("\(file): \(workflow.id) v\(workflow.version) is registered already with the same content; unchanged")
                        }
                    } catch let errors as DefinitionErrors {
                        throw CLIFailure(errors.description)
                    } catch let conflict as DefinitionConflict {
                        // A conflict's exit status: the version is taken by another text (shown), as for a conflicting start.
                        FileHandle.standardError.write(Data("Error: \(file): conflict: \(conflict.description); registered:\n\(conflict.registered.document)\n".utf8))
                        throw ExitCode(ClientError.Kind.conflict.exitCode)
                    }
                }
            }
        }
    }
}

struct Tasks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Human tasks: list, claim, approve, reject.",
        discussion: "Claims and decisions go through `baton serve` (--server, --token): only a holder of the task's role, or an admin, may decide it.",
        subcommands: [List.self, Claim.self, Approve.self, Reject.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tasks: through the server, the inbox of the token's principal; without one, every open task.")
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var server: ServerOptions
        @Option(help: "The inbox view through the server: open, mine, unassigned, completed.") var view = "open"
        @Option(help: "Only tasks for this assignee, as role:credit_manager.") var assignee: String?
        @Flag(help: "Closed tasks too (without a server).") var all = false

        func run() async throws {
            var tasks: [TaskView]
            if let api = try server.api() {
                let (_, body) = try await api.call(.GET, "/v1/tasks?view=\(APIClient.escape(view))")
                tasks = try (body["items"]?.arrayValue ?? []).map { try JSONDecoder().decode(TaskView.self, from: $0.encoded()) }
            } else {
                let all = self.all
                tasks = try await connection.withReadModel { model in model.tasks { all || $0.status == .open } }
            }
            tasks = tasks.filter { assignee == nil || $0.assignee == assignee }
            if tasks.isEmpty { print("no tasks") }
            for t in tasks {
                print("\(t.taskID)  \(t.status.rawValue)  \(t.assignee)  \(t.claimedBy.map { "claimed by \($0)  " } ?? "")\(t.title)  input: \(t.input.jsonText)")
            }
        }
    }

    struct Claim: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Claim a task (or give it back with --release) through the server.")
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var server: ServerOptions
        @Argument(help: "The task id.") var task: String
        @Flag(help: "Give the task back.") var release = false

        func run() async throws {
            guard let api = try server.api() else { throw CLIFailure("claims go through the server: give --server (or $BATON_SERVER) and a token") }
            let (_, body) = try await api.call(.POST, "/v1/tasks/\(APIClient.escape(task))/\(release ? "unclaim" : "claim")", body: .object([:]))
            print(release ? "released \(task)" : "claimed \(task) for \(body["claimed_by"]?.stringValue ?? "you")")
        }
    }

    /// What approving and rejecting share.
    struct Decision: ParsableArguments {
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var server: ServerOptions
        @Argument(help: "The task id.") var task: String
        @Option(help: "A comment.") var comment: String?
        @Option(help: "Data that becomes part of the step's output, as JSON.") var data: String?

        func send(approve: Bool) async throws {
            guard let api = try server.api() else {
                throw CLIFailure("decisions go through the server, which checks your role: give --server (or $BATON_SERVER) and a token (--token or $BATON_TOKEN)")
            }
            var body: [String: JSON] = ["approved": .bool(approve)]
            if let comment { body["comment"] = .string(comment) }
            if let data {
                do { body["data"] = try JSON.parse(Data(data.utf8)) } catch { throw CLIFailure("--data is not valid JSON: \(error)") }
            }
            let (status, answer) = try await api.call(.POST, "/v1/tasks/\(APIClient.escape(task))/decision", body: .object(body))
            if status == 202 {
                print("sent: \(approve ? "approve" : "reject") \(task) (not applied yet: \(answer["detail"]?.stringValue ?? ""))")
            } else {
                print("\(approve ? "approved" : "rejected") \(task) as \(answer["decided_by"]?.stringValue ?? "?")")
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Approve an open task.")
        @OptionGroup var decision: Decision
        func run() async throws { try await decision.send(approve: true) }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reject an open task (the workflow takes its failure path).")
        @OptionGroup var decision: Decision
        func run() async throws { try await decision.send(approve: false) }
    }
}

struct Instances: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List instances, and operators' commands on one.", subcommands: [List.self, Resume.self, Retry.self, Skip.self, Cancel.self, Audit.self])

    struct Audit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Find where running instances stopped: command published? consumed by the pool? result sent? applied?",
            discussion: """
                Reads every record of the state, command and events topics and the offsets each group committed. For \
                each attempt an instance waits on, it says whether its command was never published, the pool is behind, \
                the pool committed past the command with no result (skipped), the coordinators are behind, or they \
                committed past the result without applying it (skipped). Exits 1 when something was skipped.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Instance ids (default: every instance that is running or compensating).") var ids: [String] = []

        func run() async throws {
            let skipped = try await connection.withClient { client -> Bool in
                let targets = ids.isEmpty ? Set(try await client.instances(statuses: [.running, .compensating]).map(\.instanceID)) : Set(ids)
                let report = try await OffsetAudit.run(client: client, instanceIDs: targets, logger: connection.makeLogger("baton.audit"))
                if report.entries.isEmpty { print("nothing to audit: no instance is running or compensating") }
                for (finding, count) in report.counts.sorted(by: { $0.value > $1.value }) { print("\(count) \(finding.rawValue)") }
                for entry in report.entries { print("  \(entry)") }
                return report.entries.contains { $0.finding == .workerSkippedCommand || $0.finding == .coordinatorSkippedResult }
            }
            if skipped { throw ExitCode(1) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List instances, latest change first: id, workflow, status, and why it failed or is suspended.")
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var server: ServerOptions
        @Option(
            name: .customLong("status"),
            help: ArgumentHelp(
                "Only instances with this status (repeatable, or a comma list such as failed,suspended): \(InstanceStatus.allCases.map(\.rawValue).joined(separator: ", ")).",
                valueName: "status"),
            transform: InstanceStatus.list)
        var statuses: [[InstanceStatus]] = []
        var status: [InstanceStatus] { statuses.flatMap { $0 } }
        @Option(help: "Only instances of this workflow.") var workflow: String?
        @Option(help: "At most this many.") var limit = 1000

        func run() async throws {
            let found: [InstanceSummary]
            if let api = try server.api() {
                var query = ["limit=\(limit)"]
                if !status.isEmpty { query.append("status=\(status.map(\.rawValue).joined(separator: ","))") }
                if let workflow { query.append("workflow=\(APIClient.escape(workflow))") }
                let (_, body) = try await api.call(.GET, "/v1/instances?\(query.joined(separator: "&"))")
                found = try (body["items"]?.arrayValue ?? []).map { try JSONDecoder().decode(InstanceSummary.self, from: $0.encoded()) }
            } else {
                let filter = InstanceFilter(statuses: status.isEmpty ? nil : Set(status), workflowID: workflow)
                let limit = self.limit
                found = try await connection.withReadModel { $0.instances(filter, limit: limit).items }
            }
            if found.isEmpty { print("no instances") }
            for s in found {
                let started = Date(timeIntervalSince1970: Double(s.startedAt) / 1000).formatted(.iso8601)
                print("\(s.instanceID)  \(s.workflowID) v\(s.version)  \(s.status.rawValue)  started \(started)\(s.reason.map { "  \($0)" } ?? "")")
            }
        }
    }

    /// What every operator command shares.
    struct Target: ParsableArguments {
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var server: ServerOptions
        @Argument(help: "The instance id.") var id: String
        @Option(help: "Seconds to wait for a coordinator to apply it; 0 sends it unchecked and does not wait.") var wait = 30

        /// Through the server when one is named (it checks the caller's role and signs the action for them);
        /// else signed with the operator's own key (BATON_SIGNING_KEY): the coordinators apply no unsigned action.
        /// Checks the command against the instance (as the coordinator will), sends it, and waits until it is
        /// applied: a refusal or a command no coordinator applied is an error, with the reason.
        func send(_ command: OperatorMessage.Command, step: String? = nil, output: String? = nil, reason: String? = nil) async throws {
            let out: JSON?
            do { out = try output.map { try JSON.parse(Data($0.utf8)) } } catch { throw CLIFailure("--output is not valid JSON: \(error)") }
            if let api = try server.api() {
                var body: [String: JSON] = ["action": .string(command.rawValue)]
                if let step { body["step"] = .string(step) }
                if let out { body["output"] = out }
                if let reason { body["reason"] = .string(reason) }
                let (status, answer) = try await api.call(.POST, "/v1/instances/\(APIClient.escape(id))/actions", body: .object(body))
                print(status == 202 ? "sent \(command.rawValue) to \(id): \(answer["detail"]?.stringValue ?? "not applied yet")" : "\(command.rawValue) applied to \(id): now \(answer["instance"]?["status"]?.stringValue ?? "?")")
                return
            }
            let signer = try operatorSigner()
            try await connection.withClient(signer: signer) { client in
                if wait > 0 {
                    let state = try await client.operateAndWait(instanceID: id, command, step: step, output: out, reason: reason, timeout: .seconds(wait))
                    print("\(command.rawValue) applied to \(id): now \(state.status.rawValue)")
                } else {
                    let request = try await client.operate(instanceID: id, command, step: step, output: out, reason: reason)
                    print("sent \(command.rawValue) to \(id) (request \(request))")
                }
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Continue a suspended instance: retry everything that failed.")
        @OptionGroup var target: Target
        func run() async throws { try await target.send(.resume) }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Retry a suspended instance's failed step or failed compensation.")
        @OptionGroup var target: Target
        @Option(help: "The step (default: everything that failed).") var step: String?
        func run() async throws { try await target.send(.retry, step: step) }
    }

    struct Skip: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Treat a suspended instance's failed step as skipped (or its failing compensation as done).")
        @OptionGroup var target: Target
        @Option(help: "The step.") var step: String
        @Option(help: "The output the skipped step gives its dependents, as JSON.") var output: String?
        func run() async throws { try await target.send(.skip, step: step, output: output) }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel an instance: compensate what was done, then end cancelled.")
        @OptionGroup var target: Target
        @Option(help: "Why.") var reason: String = "cancelled by an operator"
        func run() async throws { try await target.send(.cancel, reason: reason) }
    }
}

extension InstanceStatus: ExpressibleByArgument {
    /// A `--status` value: one status or a comma list; an unknown one is named with the ones there are.
    static func list(_ text: String) throws -> [InstanceStatus] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map { part in
            let name = part.trimmingCharacters(in: .whitespaces)
            guard let status = InstanceStatus(rawValue: name) else {
                throw ValidationError("unknown status '\(name)' in --status \(text): use \(allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return status
        }
    }
}

/// Static group membership for the long-running group members (coordinator, workers, triggers).
struct MembershipOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Static group membership: a name for this process in its consumer groups (group.instance.id), so that restarted within its session timeout it gets its partitions back without a rebalance. Unique per live process, the same across its restarts, such as a StatefulSet pod's or a compose service's name (default: $BATON_INSTANCE_ID; none when unset). See docs/deploy.md.",
        valueName: "id"))
    var instanceId: String?

    /// `client` with the instance id of the option, else of `BATON_INSTANCE_ID`.
    func apply(to client: KafkaClientConfiguration) throws -> KafkaClientConfiguration {
        var client = client
        let variable = KafkaClientConfiguration.instanceIDVariable
        guard let id = instanceId ?? ProcessInfo.processInfo.environment[variable].flatMap({ $0.isEmpty ? nil : $0 }) else { return client }
        do { try client.setGroupInstanceID(id, source: instanceId != nil ? "--instance-id" : variable) } catch { throw CLIFailure("\(error)") }
        return client
    }
}

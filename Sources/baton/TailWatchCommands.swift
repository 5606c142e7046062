import ArgumentParser
import BatonClient
import BatonCore
import BatonKafka
import BatonOperatorTools
import BatonWire
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an engine topic's records, decoded, one line each: events, commands POOL, state, outputs, tasks, alerts, notifications, definitions, deadletter.",
        discussion: """
            Each line: the record's time (ISO 8601, milliseconds), partition@offset, kind, instance id, then the fields that \
            matter (step, item, attempt, error, a short output and its size, status, severity and message, a dead letter's \
            reason and origin ...). --json prints one JSON object per line with the same fields and the whole decoded record \
            (`record`). A record that cannot be decoded is printed as `undecodable` with the reason. Without --follow it reads \
            to the end of every partition and exits 0; with --follow it keeps reading until SIGINT or SIGTERM.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: ArgumentHelp("The topic: \(TailTopic.names.joined(separator: ", ")).", valueName: "topic")) var topic: String
    @Argument(help: ArgumentHelp("The worker pool, after `commands` (its topic is <namespace>.commands.POOL).", valueName: "pool")) var pool: String?
    @Option(help: "Where to start: beginning or end (default: beginning; end with --follow).") var from: TopicTail.Start?
    @Flag(help: "Keep reading new records until SIGINT or SIGTERM.") var follow = false
    @Flag(help: "One JSON object per line: the same fields, and the decoded record.") var json = false

    func run() async throws {
        let target: TailTopic
        do { target = try TailTopic.named(topic, pool: pool) } catch { throw CLIFailure(error.description) }
        let logger = connection.makeLogger("baton.tail")
        let tail = TopicTail(client: try connection.clientConfiguration, names: connection.names, topic: target, logger: logger)
        let (start, follow, json) = (from ?? (follow ? .end : .beginning), self.follow, self.json)
        _ = try await runUntilSignal(logger: logger) {
            try await tail.run(from: start, follow: follow) { batch in
                for record in batch { print(json ? tail.formatter.jsonLine(record) : tail.formatter.line(record)) }
                fflush(nil)  // every stream: a reader of a pipe sees each line as it comes
            }
        }
    }
}

extension TopicTail.Start: ExpressibleByArgument {}

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch the engine live (steps per second, in flight, step times, lag, alerts), or one instance's steps until it ends.",
        discussion: """
            Without an id: a frame every --interval, cleared and redrawn when the output is a terminal; with --plain (or \
            when it is not a terminal) each frame is printed after the previous one, separated by a line of dashes. Per \
            workflow and step: steps started, completed, failed and compensated per second over the last interval / the \
            last 10 s / since the watch started; attempts in flight; p50 and p99 step times over 10 s. Then instances \
            finished by outcome, the records each group has not consumed yet (coordinators on events, each pool's \
            workers on its command topic), and the latest alerts. SIGINT or SIGTERM ends it (exit 0).

            With an id: every change of that instance (steps started, completed with their time, failed, retried, \
            compensated; tasks; its status), then a last line with how it ended and how long it took. Exits 0 when it \
            completed, 1 when it failed or was cancelled, 2 when it is suspended (it waits for an operator: `baton \
            instances retry|resume|skip|cancel`, then watch it again). An instance that does not exist yet is waited \
            for (--wait).
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "An instance id: follow that instance until it ends.") var id: String?
    @Option(help: "Seconds between frames.") var interval: Double = 1
    @Option(help: "Stop after this many frames (for scripts and tests).") var frames: Int?
    @Flag(help: "Print frames one after the other, without clearing the screen.") var plain = false
    @Option(help: "With an id: how many seconds to wait for the instance to appear.") var wait = 30

    func run() async throws {
        if let id { try await watchInstance(id) } else { try await watchEngine() }
    }

    func watchEngine() async throws {
        guard interval >= 0.1 else { throw CLIFailure("--interval: \(interval) is too short (at least 0.1 seconds)") }
        if let frames, frames < 1 { throw CLIFailure("--frames: \(frames) is not a number of frames (at least 1)") }
        let logger = connection.makeLogger("baton.watch")
        var settings = WatchStats.Settings()
        settings.interval = Int64((interval * 1000).rounded())
        settings.window = max(10_000, settings.interval)
        let watch = EngineWatch(client: try connection.clientConfiguration, names: connection.names, settings: settings, logger: logger)
        let (frames, namespace) = (self.frames, connection.resolvedNamespace)
        let redraw = !plain && isatty(STDOUT_FILENO) == 1
        _ = try await runUntilSignal(logger: logger) {
            var shown = 0
            try await watch.run(frames: frames) { frame in
                let text = frame.render(namespace: namespace)
                if redraw {
                    print("\u{1B}[H\u{1B}[2J" + text)
                } else {
                    if shown > 0 { print(String(repeating: "-", count: 100)) }
                    print(text)
                }
                shown += 1
                fflush(nil)  // every stream: a reader of a pipe sees each line as it comes
            }
        }
    }

    func watchInstance(_ id: String) async throws {
        guard wait >= 0 else { throw CLIFailure("--wait: \(wait) is not a number of seconds") }
        let logger = connection.makeLogger("baton.watch")
        let waitFor = Duration.seconds(wait)
        let ended = try await connection.withClient { client in
            try await runUntilSignal(logger: logger) {
                try await client.followInstance(id, waitFor: waitFor) { at, changes in
                    for change in changes {
                        print([RecordFormatter.time(at), change.subject, change.text].compactMap { $0 }.joined(separator: "  "))
                    }
                    fflush(nil)  // every stream: a reader of a pipe sees each line as it comes
                }
            }
        }
        // Nil: stopped by a signal before it ended.
        guard let last = ended ?? nil else { return }
        print(InstanceChanges.outcome(last.state, at: last.at))
        switch last.state.status {
        case .completed: return
        case .suspended: throw ExitCode(2)
        default: throw ExitCode(1)
        }
    }
}

/// Runs `body` until it returns, or until SIGINT or SIGTERM: then its task is cancelled, and a reader of topics
/// returns at its next poll. Returns what `body` returned (nil when it returned nothing before the signal).
func runUntilSignal<T: Sendable>(logger: Logger, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    let result = ResultBox<T>()
    let service = ClosureService {
        do { result.set(try await cancelWhenGracefulShutdown(body)) } catch is CancellationError {
            // Stopped by the signal: a reader cancelled in the middle of a poll ends here, as at its next poll.
        }
    }
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)], gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
    do { try await group.run() } catch let error as ClientError { throw CLIFailure(error) }
    return result.get()
}

/// A value handed out of a service's task.
final class ResultBox<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    func set(_ new: T) { value.withLock { $0 = new } }
    func get() -> T? { value.withLock { $0 } }
}

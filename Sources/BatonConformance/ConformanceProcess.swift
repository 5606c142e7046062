import BatonClient
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The worker under test: `bash -c COMMAND`, in a process group of its own, so that the tool can kill it and
/// every process it started (a shell that runs `cd x && python3 worker.py` has a child of its own). Its
/// output goes to a log file per start. Whoever starts it must `stop` it, on every path.
final class ConformanceWorkerProcess: Sendable {
    struct State {
        var pid: pid_t?
        /// How the last started process ended, once it has.
        var ended: String?
        var starts = 0
        var logs: [URL] = []
    }

    let command: String
    let environment: [String: String]
    let logDirectory: URL
    let state = Mutex(State())

    init(command: String, environment: [String: String], logDirectory: URL) {
        self.command = command
        self.environment = environment
        self.logDirectory = logDirectory
    }

    /// The log files, one per start, oldest first.
    var logs: [URL] { state.withLock { $0.logs } }

    func start() throws {
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        let number = state.withLock { s -> Int in
            s.starts += 1
            return s.starts
        }
        let log = logDirectory.appendingPathComponent("worker-\(number).log")
        let pid = try Self.spawn(command: command, environment: environment, log: log)
        state.withLock { s in
            s.pid = pid
            s.ended = nil
            s.logs.append(log)
        }
    }

    /// Nil while the process runs; how it ended once it has (`exited with status 3`, `killed by signal 9`).
    func ended() -> String? {
        state.withLock { s in
            guard s.ended == nil, let pid = s.pid else { return s.ended }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                s.ended = Self.describe(status)
            } else if r < 0 {
                s.ended = "gone (\(String(cString: strerror(errno))))"
            }
            return s.ended
        }
    }

    /// SIGKILL to the whole group, then waits for the process to be reaped.
    func kill9() async {
        guard let pid = state.withLock({ $0.pid }) else { return }
        _ = kill(-pid, SIGKILL)
        await waitForExit(within: .seconds(10))
    }

    /// SIGTERM to the group (a worker may leave its consumer group cleanly), `grace` to end, then SIGKILL to
    /// the group whatever happened (a child that ignored SIGTERM, or one left behind by its shell).
    func stop(grace: Duration = .seconds(5)) async {
        guard let pid = state.withLock({ $0.pid }) else { return }
        if ended() == nil {
            _ = kill(-pid, SIGTERM)
            await waitForExit(within: grace)
        }
        _ = kill(-pid, SIGKILL)
        await waitForExit(within: .seconds(10))
    }

    /// Polls for the exit (a child is reaped with `waitpid`, which would block a thread of the cooperative pool).
    func waitForExit(within timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        // Not cancellable on purpose: a stop during a cancelled run (Ctrl-C) must still wait for the process.
        while ended() == nil, ContinuousClock.now < deadline { await Self.pause() }
    }

    /// 20 ms, whether or not the task is cancelled.
    static func pause() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) { c.resume() }
        }
    }

    /// The last `lines` lines of the newest log.
    func logTail(lines: Int = 20) -> String {
        // The tail is shown beside a failure to help; a log that cannot be read leaves it empty, the failure stands.
        guard let log = logs.last, let text = try? String(contentsOf: log, encoding: .utf8) else { return "" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    static func describe(_ status: Int32) -> String {
        let signal = status & 0x7f
        return signal == 0 ? "exited with status \((status >> 8) & 0xff)" : "killed by signal \(signal)"
    }

    /// posix_spawn of `/bin/bash -c command` as the leader of a new process group, stdin from /dev/null, stdout
    /// and stderr to `log`, with the default disposition of the signals this process may trap or ignore (a
    /// child inherits ignored signals, and a service lifecycle ignores SIGINT and SIGTERM to trap them).
    static func spawn(command: String, environment: [String: String], log: URL) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let arguments = ["/bin/bash", "-c", command]
        let variables = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = variables.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let rc = posix_spawn(&pid, "/bin/bash", &actions, &attributes, argv, envp)
        guard rc == 0 else {
            throw ClientError(.unavailable, "could not start the worker (/bin/bash -c \(command)): \(String(cString: strerror(rc)))")
        }
        return pid
    }
}

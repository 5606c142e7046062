import BatonRuntime
import Foundation
import Synchronization

/// Baton services run as child processes of this one (the same binary), as they are deployed. Safe to share
/// between tasks: the list of children is behind a lock, and the log directory never changes.
final class ChildProcesses: Sendable {
    private let processes = Mutex<[Process]>([])
    private let signalSources = Mutex<[any DispatchSourceSignal]>([])
    let logDirectory: URL

    init() {
        logDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-\(ProcessInfo.processInfo.processIdentifier)")
        try? FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
    }

    static var executable: URL {
        URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0])
    }

    /// Starts `baton <arguments>`, its output going to `<name>.log` in the log directory.
    @discardableResult
    func spawn(_ name: String, _ arguments: [String]) throws -> Process {
        let log = logDirectory.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes.withLock { $0.append(process) }
        return process
    }

    /// Stops every child when this process gets SIGINT or SIGTERM, then exits with 128 + the signal, as a shell
    /// reports it: without this an interrupted bench or demo leaves its coordinators and workers running.
    func stopOnInterrupt() {
        signalSources.withLock { sources in
            for number in [SIGINT, SIGTERM] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { [self] in
                    FileHandle.standardError.write(Data("signal \(number): stopping the child processes\n".utf8))
                    stopAll()
                    exit(128 + number)
                }
                source.resume()
                sources.append(source)
            }
        }
    }

    /// SIGTERM to one (graceful shutdown), then wait for it.
    func stop(_ process: Process) {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        processes.withLock { $0.removeAll { $0 === process } }
    }

    /// The log of a child, as written so far.
    func log(_ name: String) -> String {
        (try? String(contentsOf: logDirectory.appendingPathComponent("\(name).log"), encoding: .utf8)) ?? ""
    }

    /// A process's resident memory in bytes (Linux: VmRSS in /proc/<pid>/status).
    static func residentBytes(_ process: Process) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return nil }
        return kb * 1024
    }

    /// The lines of every child's log that contain `text`.
    func logLines(containing text: String) -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(at: logDirectory, includingPropertiesForKeys: nil)) ?? []
        return files.flatMap { file in
            ((try? String(contentsOf: file, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(text) }.map(String.init)
        }
    }

    /// SIGTERM to each (graceful shutdown), then wait for them.
    func stopAll() {
        let children = processes.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for p in children where p.isRunning { p.terminate() }
        for p in children { p.waitUntilExit() }
    }

    deinit { stopAll() }
}

extension ChildProcesses {
    /// The keys of the coordinators this command starts: the ones the environment names, else a folder of this
    /// run's own (in the log folder), given to every child through `BATON_KEYS_DIR`.
    func ensureKeys() throws {
        let settings = KeySettings.fromEnvironment()
        if settings.trustedKeys != nil, settings.resultSecret != nil { return }
        let dir = logDirectory.appendingPathComponent("keys")
        try KeyDirectory.initialize(dir)
        setenv(KeySettings.directoryVariable, dir.path, 1)
    }
}

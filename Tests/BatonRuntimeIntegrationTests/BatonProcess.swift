import BatonKafka
import BatonTestSupport
import Foundation
import Testing

/// The `baton` executable run as a child process, as it is deployed, so that signals are real.
final class BatonProcess: @unchecked Sendable {
    let process = Process()
    let log: URL

    /// `BATON_BIN`, else the `baton` built next to the test bundle.
    static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["BATON_BIN"] { return URL(fileURLWithPath: path) }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("baton")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: ".build/debug/baton")
    }

    init(_ arguments: [String], namespace: String, brokers: KafkaBrokers = TestKafka.brokers) throws {
        log = FileManager.default.temporaryDirectory.appendingPathComponent("\(TestKafka.uniqueName("baton-proc")).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.executableURL = Self.binary
        let level = arguments.contains("--log-level") ? [] : ["--log-level", "info"]
        process.arguments = arguments + ["--namespace", namespace, "--brokers", brokers.bootstrapServers] + level
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    func kill9() {
        signal(SIGKILL)
        process.waitUntilExit()
    }

    func terminate() {
        if process.isRunning {
            signal(SIGTERM)
            process.waitUntilExit()
        }
    }

    var isRunning: Bool { process.isRunning }

    /// Waits (on a Dispatch thread, not the cooperative pool) for the process to exit; its exit status.
    func exitStatus() async -> Int32 {
        let process = self.process
        return await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                process.waitUntilExit()
                continuation.resume(returning: process.terminationStatus)
            }
        }
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: log)
    }
}

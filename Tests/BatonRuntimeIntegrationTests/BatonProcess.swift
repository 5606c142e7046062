import BatonKafka
import BatonRuntime
import BatonTestSupport
import Foundation
import Testing

/// The `baton` executable run as a child process, as it is deployed, so that signals are real.
final class BatonProcess: @unchecked Sendable {
    let process = Process()
    let log: URL

    /// `BATON_BIN`, else the `baton` built next to the test bundle.
    static var binary: URL { TestBinary.baton }

    init(_ arguments: [String], namespace: String, brokers: KafkaBrokers = TestKafka.brokers, environment: [String: String] = [:]) throws {
        log = FileManager.default.temporaryDirectory.appendingPathComponent("\(TestKafka.uniqueName("baton-proc")).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.executableURL = Self.binary
        let level = arguments.contains("--log-level") ? [] : ["--log-level", "info"]
        process.arguments = arguments + ["--namespace", namespace, "--brokers", brokers.bootstrapServers] + level
        process.standardOutput = handle
        process.standardError = handle
        // Every process gets the tests' keys (a coordinator needs them; a test may give others).
        let keys = [KeySettings.directoryVariable: TestKeys.directory.path]
        process.environment = ProcessInfo.processInfo.environment.merging(keys) { _, new in new }.merging(environment) { _, new in new }
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

    /// Waits until the process has printed a line matching `pattern`; the pattern's first capture.
    func waitForLine(_ pattern: String, timeout: Duration = .seconds(60)) async throws -> String {
        let regex = try Regex(pattern)
        var found: String?
        try await waitUntil("baton \(process.arguments?.first ?? "") to print /\(pattern)/", timeout: timeout) {
            guard isRunning else { throw ProcessEnded(output: output) }
            guard let match = output.firstMatch(of: regex) else { return false }
            found = match.output.count > 1 ? match.output[1].substring.map(String.init) : String(match.output[0].substring ?? "")
            return true
        }
        return found ?? ""
    }

    struct ProcessEnded: Error, CustomStringConvertible {
        var output: String
        var description: String { "the process ended; it printed:\n\(output.suffix(4000))" }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: log)
    }
}

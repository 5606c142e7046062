import BatonConformance
import BatonTestSupport
import Foundation
import Testing

extension OneAtATime {
    /// `baton conformance` run as it is used (a child process, driving a worker process of its own) against the
    /// Swift SDK's conformance worker, against deliberately broken workers, and interrupted.
    @Suite("Conformance: baton conformance against real worker processes", .serialized, .timeLimit(.minutes(5)))
    struct ConformanceTests {
        static let cases = ["echo", "failure", "compensation", "duplicate", "old-attempt", "token", "start", "unreadable", "oversized", "deadline", "crash", "commits"]

        /// The Swift SDK's worker, as `baton conformance` starts it (BATON_POOL, BATON_BROKERS, BATON_NAMESPACE come from the tool).
        static var swiftWorker: String { "'\(BatonProcess.binary.path)' conformance-worker" }

        /// Starts `baton conformance` on a fresh namespace. `marker` is put in its environment (and so in the
        /// worker's), to find their processes afterwards.
        func start(worker: String, cases: [String] = [], marker: String) throws -> BatonProcess {
            try BatonProcess(
                ["conformance", "--pool", "conformance", "--worker", worker, "--log-level", "error"] + cases.flatMap { ["--case", $0] },
                namespace: TestKafka.uniqueName("conf"), environment: ["BATON_CONFORMANCE_TEST_MARKER": marker])
        }

        /// Waits for the tool to exit; past the deadline it is interrupted (it stops its worker) and the test fails.
        func finish(_ process: BatonProcess, within timeout: Duration) async throws -> (status: Int32, output: String) {
            do {
                try await waitUntil("baton conformance to finish", timeout: timeout) { !process.isRunning }
            } catch {
                process.signal(SIGTERM)
                try? await waitUntil("baton conformance to stop after SIGTERM", timeout: .seconds(20)) { !process.isRunning }
                if process.isRunning { process.kill9() }
                Issue.record("baton conformance did not finish within \(timeout); it printed:\n\(process.output)")
                throw error
            }
            return (await process.exitStatus(), process.output)
        }

        /// Processes whose environment holds the marker (the tool and the workers it started).
        static func processes(marked marker: String) -> [Int32] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            let needle = Data("BATON_CONFORMANCE_TEST_MARKER=\(marker)".utf8)
            return entries.compactMap(Int32.init).filter { pid in
                guard let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
                return environ.range(of: needle) != nil
            }
        }

        func lines(_ output: String) -> [String] { output.split(separator: "\n").map(String.init) }

        @Test func theSwiftSDKWorkerPassesEveryCase() async throws {
            let marker = UUID().uuidString
            let tool = try start(worker: Self.swiftWorker, marker: marker)
            let (status, output) = try await finish(tool, within: .seconds(240))
            let printed = lines(output)
            for name in Self.cases {
                #expect(printed.contains("PASS \(name)"), "\(name) did not pass:\n\(output)")
            }
            #expect(printed.contains("\(Self.cases.count) passed, 0 failed"), "\(output)")
            #expect(status == 0, "\(output)")
            // The crash case killed a worker that was running the command, and the restarted one answered it.
            #expect(output.contains("it had answered the command behind the sleep, so it was running the sleep"), "\(output)")
            #expect(Self.processes(marked: marker).isEmpty, "the worker outlived the tool")
        }

        @Test func aWorkerThatRunsLateCommandsFailsTheDeadlineCase() async throws {
            let marker = UUID().uuidString
            let tool = try start(worker: "\(Self.swiftWorker) --fault late-commands", cases: ["echo", "deadline"], marker: marker)
            let (status, output) = try await finish(tool, within: .seconds(120))
            let printed = lines(output)
            #expect(printed.contains("PASS echo"), "\(output)")
            #expect(printed.contains { $0.hasPrefix("FAIL deadline: ") && $0.contains("10 s past its deadline, was answered") }, "\(output)")
            #expect(printed.contains("1 passed, 1 failed"), "\(output)")
            #expect(status == 1)
            #expect(Self.processes(marked: marker).isEmpty, "the worker outlived the tool")
        }

        @Test func aWorkerThatAnswersAnOldAttemptWithTheNewOnesOutputFailsTheOldAttemptCase() async throws {
            let marker = UUID().uuidString
            let tool = try start(worker: "\(Self.swiftWorker) --fault attempt-cache", cases: ["old-attempt"], marker: marker)
            let (status, output) = try await finish(tool, within: .seconds(120))
            #expect(lines(output).contains { $0.hasPrefix("FAIL old-attempt: ") && $0.contains("attempt 1") }, "\(output)")
            #expect(output.contains("\"attempt\":2"), "the failure shows the output it got:\n\(output)")
            #expect(lines(output).contains("0 passed, 1 failed"), "\(output)")
            #expect(status == 1)
        }

        @Test func aWorkerThatDoesNotStartFailsWithItsOutput() async throws {
            let marker = UUID().uuidString
            let tool = try start(worker: "echo 'cannot reach the brokers' >&2; exit 3", cases: ["echo", "crash"], marker: marker)
            let (status, output) = try await finish(tool, within: .seconds(60))
            let printed = lines(output)
            #expect(printed.contains { $0.hasPrefix("FAIL startup: the worker exited with status 3") }, "\(output)")
            #expect(output.contains("| cannot reach the brokers"), "the worker's output is shown:\n\(output)")
            #expect(printed.contains("FAIL echo: not run: the worker did not start"), "\(output)")
            #expect(printed.contains("0 passed, 3 failed"), "\(output)")
            #expect(status == 1)
        }

        @Test func anInterruptedRunStopsItsWorker() async throws {
            let marker = UUID().uuidString
            let tool = try start(worker: Self.swiftWorker, marker: marker)
            _ = try await tool.waitForLine("PASS echo", timeout: .seconds(90))
            // The tool and its worker (a process group of its own, which a terminal's Ctrl-C would not reach).
            #expect(Self.processes(marked: marker).count >= 2)
            tool.signal(SIGINT)
            let (status, output) = try await finish(tool, within: .seconds(30))
            #expect(status == 130, "\(output)")
            #expect(Self.processes(marked: marker).isEmpty, "the worker outlived the interrupted tool")
        }
    }
}

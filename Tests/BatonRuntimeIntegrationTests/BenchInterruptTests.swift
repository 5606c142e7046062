import BatonTestSupport
import Foundation
import Testing

/// `baton bench` (and `baton demo`) run the engine as child processes: interrupted, they stop them.
@Suite("Bench: an interrupted bench stops what it started")
struct BenchInterruptTests {
    /// The command lines of this machine's processes that name `text` (from /proc).
    static func processes(naming text: String) -> [String] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []  // none readable: none found
        return pids.filter { Int($0) != nil }.compactMap { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return line.contains(text) && (line.contains(" coordinator ") || line.contains(" example-workers ")) ? line : nil
        }
    }

    @Test func anInterruptedBenchStopsItsCoordinatorAndWorkers() async throws {
        let bench = try BatonProcess(["bench", "--instances", "100000", "--rate", "20", "--partitions", "1", "--no-metrics"], namespace: TestKafka.uniqueName("bi"))
        defer { bench.terminate() }
        let namespace = try await bench.waitForLine("namespace (\\S+); ", timeout: .seconds(60))
        try await waitUntil("the bench's coordinator and workers running", timeout: .seconds(30)) { Self.processes(naming: "--namespace \(namespace) ").count == 2 }
        bench.signal(SIGINT)
        #expect(await bench.exitStatus() == 130, "\(bench.output)")
        try await waitUntil("the bench's coordinator and workers stopped", timeout: .seconds(30)) { Self.processes(naming: "--namespace \(namespace) ").isEmpty }
    }
}

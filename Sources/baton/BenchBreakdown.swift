import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat

/// The CPU time a process has used (Linux: utime + stime in /proc/<pid>/stat), to say what each process of a
/// benchmark cost.
enum ProcessCPU {
    static func seconds(pid: Int32) -> Double? {
        // A process that is gone has nothing to report.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        // After the command name (in parentheses; it may hold spaces) come the fields from the 3rd (state) on:
        // utime is the 14th, stime the 15th.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The pid `deploy/local-broker` wrote for the broker on `port`, if it runs here.
    static func localBrokerPID(port: Int) -> Int32? {
        let cache = ProcessInfo.processInfo.environment["BATON_CACHE"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/baton")
        // No pid file: the broker is not one this machine started; its CPU is not reported.
        guard let text = try? String(contentsOf: cache.appendingPathComponent("run/tansu-\(port).pid"), encoding: .utf8) else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// The CPU time named processes use over an interval, and the broker's when `deploy/local-broker` runs it here.
struct CPUMeter {
    private let processes: [(name: String, pid: Int32)]
    private let before: [Double?]

    /// Starts measuring; `brokers` is the bootstrap list, whose first port names the local broker.
    init(_ processes: [(name: String, pid: Int32)], brokers: String) {
        var all = processes
        if let port = brokers.split(separator: ",").first?.split(separator: ":").last.flatMap({ Int($0) }), let broker = ProcessCPU.localBrokerPID(port: port) {
            all.append(("broker", broker))
        }
        self.processes = all
        before = all.map { ProcessCPU.seconds(pid: $0.pid) }
    }

    /// "cpu over S s: NAME C s (P% of a core), ...", from the start until now.
    func report(over seconds: Double) -> String {
        let used = processes.indices.compactMap { i -> String? in
            guard let before = before[i], let after = ProcessCPU.seconds(pid: processes[i].pid) else { return nil }
            return String(format: "%@ %.1f s (%.0f%% of a core)", processes[i].name, after - before, (after - before) / max(0.001, seconds) * 100)
        }
        return String(format: "cpu over %.1f s: ", seconds) + used.joined(separator: ", ")
    }
}

/// Histograms read from a Prometheus text exposition (`/metrics`), every series of a name added together,
/// with quantiles estimated as Prometheus's `histogram_quantile` does (linearly within a bucket).
struct ScrapedHistograms {
    let lines: [Substring]

    init(_ text: String) { lines = text.split(separator: "\n").filter { !$0.hasPrefix("#") } }

    /// Cumulative counts by upper bound, of the series of `name` whose labels contain `label` (`phase="commit"`).
    func buckets(_ name: String, label: String? = nil) -> [(le: Double, count: Double)] {
        var counts: [Double: Double] = [:]
        for line in lines where line.hasPrefix("\(name)_bucket{") {
            if let label, !line.contains(label) { continue }
            guard let start = line.range(of: "le=\""), let end = line[start.upperBound...].firstIndex(of: "\""),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            let bound = line[start.upperBound..<end]
            let le = bound == "+Inf" ? Double.infinity : (Double(bound) ?? .nan)
            counts[le, default: 0] += value
        }
        return counts.map { ($0.key, $0.value) }.filter { !$0.le.isNaN }.sorted { $0.le < $1.le }
    }

    func quantile(_ q: Double, _ name: String, label: String? = nil) -> Double? {
        let sorted = buckets(name, label: label)
        guard let total = sorted.last?.count, total > 0 else { return nil }
        let rank = q * total
        var lower = 0.0
        var below = 0.0
        for (le, count) in sorted {
            if count >= rank {
                if le.isInfinite { return lower }
                return count == below ? lower : lower + (le - lower) * (rank - below) / (count - below)
            }
            lower = le
            below = count
        }
        return lower
    }

    /// "p50 / p99" of a histogram in milliseconds, or "no data".
    func milliseconds(_ name: String, label: String? = nil) -> String {
        guard let p50 = quantile(0.5, name, label: label), let p99 = quantile(0.99, name, label: label) else { return "no data" }
        return String(format: "%.1f / %.1f ms", p50 * 1000, p99 * 1000)
    }
}

extension Bench {
    /// The `/metrics` of a child that serves them (it printed `metrics on http://HOST:PORT/metrics`).
    static func scrape(_ log: String) async -> ScrapedHistograms? {
        guard let match = log.firstMatch(of: /metrics on http:\/\/[^:\s]+:(\d+)\/metrics/) else { return nil }
        do {
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(match.1)/metrics"), timeout: .seconds(10))
            return ScrapedHistograms(String(buffer: try await response.body.collect(upTo: 32 << 20)))
        } catch {
            FileHandle.standardError.write(Data("bench: could not read a child's metrics: \(error)\n".utf8))
            return nil
        }
    }

    /// Where a step's time goes, from the coordinator's and the workers' histograms (run with `--metrics`).
    static func breakdown(coordinator: ScrapedHistograms?, workers: ScrapedHistograms?) -> String {
        var lines = ["breakdown, p50 / p99, from the processes' metrics (warm-up included):"]
        if let workers {
            lines.append("  command written -> handler started (queue wait at the worker): \(workers.milliseconds("baton_worker_queue_wait_seconds"))")
            lines.append("  handler:                                                       \(workers.milliseconds("baton_worker_handler_seconds"))")
        }
        if let coordinator {
            lines.append("  result written -> fetched by the coordinator:                 \(coordinator.milliseconds("baton_coordinator_event_wait_seconds", label: "stage=\"fetched\""))")
            lines.append("  result written -> its batch starts (waits for the partition's transaction): \(coordinator.milliseconds("baton_coordinator_event_wait_seconds", label: "stage=\"batched\""))")
            lines.append("  command sent -> result applied (one attempt, as the coordinator sees it): \(coordinator.milliseconds("baton_step_duration_seconds"))")
            let phases = ["produce", "offsets", "commit", "total"].map { "\($0) \(coordinator.milliseconds("baton_coordinator_transaction_seconds", label: "phase=\"\($0)\""))" }
            lines.append("  coordinator transaction: " + phases.joined(separator: "; "))
            if let p50 = coordinator.quantile(0.5, "baton_coordinator_batch_events"), let p99 = coordinator.quantile(0.99, "baton_coordinator_batch_events") {
                lines.append(String(format: "  events per transaction: p50 %.0f, p99 %.0f", p50, p99))
            }
        }
        return lines.joined(separator: "\n")
    }
}

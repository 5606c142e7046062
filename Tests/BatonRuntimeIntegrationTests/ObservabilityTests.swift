import AsyncHTTPClient
import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonTestSupport
import BatonWire
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

extension OneAtATime {
    /// The coordinator and the workers as they are deployed (separate processes of the `baton` executable),
    /// watched by what an operator would run: a real Prometheus scraping them, and an OTLP/HTTP receiver of
    /// their spans.
    @Suite("Observability: Prometheus metrics and traces across processes", .serialized, .timeLimit(.minutes(4)))
    struct ObservabilityTests {
        /// Orders whose id contains `fail-<step>` fail at that step (the example workers' rule): `fail-charge`
        /// fails twice (retried once), and the reservation is compensated; `fail-reserve` fails with nothing
        /// to undo.
        static let workflow = """
            workflow_id: watched
            steps:
              - id: reserve
                type: service_call
                input: { order_id: $.input.order_id }
                retry: { max_attempts: 1 }
                compensation: { type: service_call }
              - id: charge
                type: service_call
                depends_on: [reserve]
                input: { order_id: $.input.order_id }
                retry: { max_attempts: 2, initial_backoff: 10ms, jitter: 0 }
            """

        static let portLine = #"metrics on http://[^:]+:(\d+)/metrics"#

        @Test func prometheusScrapesWhatTheCoordinatorAndTheWorkersDid() async throws {
            try await withEngine(partitions: 2) { engine in
                _ = try await engine.register(Self.workflow)
                let coordinator = try engine.process(["coordinator", "--metrics-port", "0", "--metrics-host", "127.0.0.1"])
                let workers = try engine.process(["example-workers", "--pool", "service_call", "--metrics-port", "0", "--metrics-host", "127.0.0.1"])
                defer {
                    coordinator.terminate()
                    workers.terminate()
                }
                let coordinatorPort = try await coordinator.waitForLine(Self.portLine)
                let workersPort = try await workers.waitForLine(Self.portLine)
                let prometheus = try PrometheusServer(jobs: ["baton-coordinator": "127.0.0.1:\(coordinatorPort)", "baton-workers": "127.0.0.1:\(workersPort)"])
                defer { prometheus.stop() }

                // Ready once the partitions are rebuilt and the group joined; healthy all along.
                #expect(try await HTTPProbe.status("http://127.0.0.1:\(coordinatorPort)/healthz") == 200)
                try await waitUntil("the coordinator to be ready", timeout: .seconds(60)) { try await HTTPProbe.status("http://127.0.0.1:\(coordinatorPort)/readyz") == 200 }
                try await waitUntil("the workers to be ready", timeout: .seconds(60)) { try await HTTPProbe.status("http://127.0.0.1:\(workersPort)/readyz") == 200 }

                let runs: [(id: String, status: InstanceStatus)] = [
                    ("ok-1", .completed), ("ok-2", .completed), ("ok-3", .completed),
                    ("fail-charge-1", .failed), ("fail-charge-2", .failed),
                    ("fail-reserve-1", .failed),
                ]
                for run in runs { _ = try await engine.start("watched", input: ["order_id": .string(run.id)], id: run.id) }
                for run in runs { try await engine.wait(run.id, for: [run.status]) }

                // What the test caused, as Prometheus sees it through its query API.
                let expected: [(String, Double)] = [
                    (#"sum(baton_instances_started_total{workflow="watched"})"#, 6),
                    (#"sum(baton_instances_finished_total{workflow="watched",outcome="completed"})"#, 3),
                    (#"sum(baton_instances_finished_total{workflow="watched",outcome="compensated"})"#, 2),
                    (#"sum(baton_instances_finished_total{workflow="watched",outcome="failed"})"#, 1),
                    (#"sum(baton_instance_duration_seconds_count{workflow="watched"})"#, 6),
                    (#"sum(baton_step_attempts_total{workflow="watched",step="charge",outcome="retried"})"#, 2),
                    (#"sum(baton_step_attempts_total{workflow="watched",step="charge",outcome="failed"})"#, 2),
                    (#"sum(baton_step_attempts_total{workflow="watched",step="charge",outcome="completed"})"#, 3),
                    (#"sum(baton_step_attempts_total{workflow="watched",step="reserve",outcome="failed"})"#, 1),
                    (#"sum(baton_compensations_total{workflow="watched",step="reserve",outcome="completed"})"#, 2),
                    (#"sum(baton_step_duration_seconds_count{workflow="watched",step="reserve"})"#, 6),
                    (#"sum(baton_worker_commands_total{pool="service_call",outcome="completed"})"#, 3 + 3 + 2 + 2),
                    (#"sum(baton_worker_commands_total{pool="service_call",outcome="failed"})"#, 4 + 1),
                    (#"sum(baton_worker_results_sent_total{pool="service_call"})"#, 15),
                    (#"sum(baton_worker_queue_wait_seconds_count{pool="service_call"})"#, 15),
                    (#"sum(baton_coordinator_transactions_total{result="committed"}) > bool 0"#, 1),
                    (#"sum(baton_coordinator_partitions_owned)"#, 2),
                    (#"sum(baton_coordinator_rebalances_total{change="assigned"}) > bool 0"#, 1),
                    (#"sum(baton_instances{workflow="watched",status="completed"})"#, 3),
                    // Outcomes that did not happen are there at 0, so that their first count shows as an increase.
                    (#"baton_step_attempts_total{workflow="watched",step="reserve",outcome="timed_out"}"#, 0),
                    (#"baton_instances_finished_total{workflow="watched",outcome="cancelled"}"#, 0),
                    (#"baton_dead_letters_total{source="coordinator",reason="conflict"}"#, 0),
                    (#"baton_worker_commands_total{pool="service_call",step="charge",outcome="handed_back"}"#, 0),
                    (#"baton_ready{component="coordinator"}"#, 1),
                    (#"baton_ready{component="worker"}"#, 1),
                    (#"sum(up{job=~"baton-.*"})"#, 2),
                ]
                for (query, value) in expected {
                    var last: Double?
                    do {
                        try await waitUntil("Prometheus to answer \(value) to \(query)", timeout: .seconds(60)) {
                            last = try await prometheus.query(query)
                            return last == value
                        }
                    } catch {
                        Issue.record("\(query): expected \(value), Prometheus last answered \(last.map { "\($0)" } ?? "nothing")")
                    }
                }
                // Nothing the engine owes: the workers' and coordinators' lag is back to zero.
                try await waitUntil("the lag of the workers' group to be 0", timeout: .seconds(30)) {
                    try await prometheus.query(#"sum(baton_consumer_lag{group=~".*workers.service_call"})"#) == 0
                }
            }
        }

        @Test func oneInstanceIsOneTraceAcrossTheCoordinatorAndTheWorkers() async throws {
            try await withEngine(partitions: 2) { engine in
                _ = try await engine.register(Self.workflow)
                try await OTLPReceiver.run { receiver in
                    let environment = [
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:\(receiver.port)/v1/traces",
                        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
                        "OTEL_BSP_SCHEDULE_DELAY": "100",
                    ]
                    let coordinator = try BatonProcess(["coordinator"], namespace: engine.names.namespace, environment: environment)
                    let workers = try BatonProcess(["example-workers", "--pool", "service_call"], namespace: engine.names.namespace, environment: environment)
                    defer {
                        coordinator.terminate()
                        workers.terminate()
                    }
                    _ = try await engine.start("watched", input: ["order_id": "ok-traced"], id: "ok-traced")
                    _ = try await engine.start("watched", input: ["order_id": "fail-charge-traced"], id: "fail-charge-traced")
                    // Started by a traced caller (W3C traceparent on the start record): the instance joins its
                    // trace. Started by a caller that does not sample its trace (flags 00): nothing is recorded.
                    let callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736", callerSpan = "00f067aa0ba902b7"
                    for (id, flags) in [("ok-caller", "01"), ("ok-unsampled", "00")] {
                        let start = StartMessage(instanceID: id, workflowID: "watched", version: nil, input: ["order_id": .string(id)], sentAt: nil)
                        try await engine.client.produce(
                            ProducerRecord(
                                topic: engine.names.events, partition: KafkaPartitioner.partition(forKey: id, partitionCount: engine.partitions),
                                key: Data(id.utf8), value: Wire.encode(start),
                                headers: Wire.headers(.start) + [KafkaHeader(key: "traceparent", string: "00-\(callerTrace)-\(callerSpan)-\(flags)")]))
                    }
                    for id in ["ok-traced", "ok-caller", "ok-unsampled"] { try await engine.wait(id, for: [.completed]) }
                    try await engine.wait("fail-charge-traced", for: [.failed])

                    // The spans of each instance: the coordinator's (its start, each command sent, each result
                    // applied) and the workers' (each command handled), exported by two processes.
                    func spans(_ id: String) -> [OTLPSpan] { receiver.spans.filter { $0.attributes["baton.instance_id"] == id } }
                    // Every command sent was handled once (ok: reserve, charge; fail-charge: reserve, charge twice, and
                    // the reservation's compensation), and every result applied.
                    func exported(_ id: String, commands: Int, results: Int) -> Bool {
                        let all = spans(id)
                        return all.count(where: { $0.service == "baton-workers" }) == commands
                            && all.count(where: { $0.service == "baton-coordinator" && $0.kind == 4 }) == commands
                            && all.count(where: { $0.name.hasPrefix("step.") || $0.name.hasPrefix("compensation.") }) == results
                    }
                    try await waitUntil("the spans of the traced instances", timeout: .seconds(60)) {
                        exported("ok-traced", commands: 2, results: 2) && exported("fail-charge-traced", commands: 4, results: 4)
                            && exported("ok-caller", commands: 2, results: 2)
                    }
                    let joined = spans("ok-caller")
                    #expect(Set(joined.map(\.traceID)) == [callerTrace])
                    #expect(joined.first { $0.name == "start watched" }?.parentSpanID == callerSpan)
                    // Exported with the others (same processes, same batches) if it had been recorded at all.
                    #expect(spans("ok-unsampled").isEmpty, "\(spans("ok-unsampled").map(\.name))")
                    #expect(!receiver.spans.contains { $0.traceID == callerTrace && $0.attributes["baton.instance_id"] != "ok-caller" })
                    for id in ["ok-traced", "fail-charge-traced"] {
                        let all = spans(id)
                        #expect(Set(all.map(\.traceID)).count == 1, "\(id): spans in \(Set(all.map(\.traceID)).count) traces: \(all.map(\.name))")
                        let start = try #require(all.first { $0.name == "start watched" }, "\(id): no start span in \(all.map(\.name))")
                        #expect(start.service == "baton-coordinator")
                        let handled = all.filter { $0.service == "baton-workers" }
                        #expect(!handled.isEmpty)
                        for span in handled {
                            // The worker's span is a child of the coordinator's span of sending its command.
                            let parent = try #require(all.first { $0.spanID == span.parentSpanID }, "\(id): the parent of \(span.name) was not exported")
                            #expect(parent.service == "baton-coordinator")
                            #expect(parent.kind == 4, "\(parent.name) is not a producer span")
                            #expect(parent.name == span.name.replacingOccurrences(of: "process ", with: "send "))
                            #expect(parent.attributes["baton.attempt"] == span.attributes["baton.attempt"])
                        }
                        // The result's span is a child of the worker's.
                        for applied in all where applied.name.hasPrefix("step.") || applied.name.hasPrefix("compensation.") {
                            let parent = all.first { $0.spanID == applied.parentSpanID }
                            #expect(parent?.service == "baton-workers", "\(applied.name)'s parent is \(parent?.name ?? "missing")")
                        }
                    }
                    let failed = spans("fail-charge-traced")
                    #expect(failed.contains { $0.name == "compensate reserve" && $0.service == "baton-coordinator" })
                    #expect(failed.contains { $0.name == "compensate reserve" && $0.service == "baton-workers" })
                    #expect(failed.contains { $0.name == "timer retry charge" }, "the retry timer's span: \(failed.map(\.name))")
                }
            }
        }
    }
}

/// One HTTP GET's status.
enum HTTPProbe {
    static func status(_ url: String) async throws -> Int {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(5))
        return Int(response.status.code)
    }
}

/// A Prometheus server of a test's own (Debian's `prometheus`, installed by scripts/setup) on a free port,
/// scraping the given targets every second; stopped when the test is done, even when it fails.
final class PrometheusServer {
    let process = Process()
    let port: Int
    let directory: URL

    init(jobs: [String: String]) throws {
        port = try PrivateBroker.freePort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(TestKafka.uniqueName("prometheus"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let scrape = jobs.sorted { $0.key < $1.key }.map { job, target in
            "  - job_name: \(job)\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['\(target)']"
        }
        let config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n" + scrape.joined(separator: "\n") + "\n"
        let configFile = directory.appendingPathComponent("prometheus.yml")
        try config.write(to: configFile, atomically: true, encoding: .utf8)
        let log = FileManager.default.createFile(atPath: directory.appendingPathComponent("log").path, contents: nil)
        precondition(log)
        let handle = try FileHandle(forWritingTo: directory.appendingPathComponent("log"))
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        process.arguments = [
            "--config.file=\(configFile.path)", "--storage.tsdb.path=\(directory.appendingPathComponent("data").path)",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
        ]
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    /// What Prometheus logged (for a failure's message; unreadable: nothing to show).
    var log: String { (try? String(contentsOf: directory.appendingPathComponent("log"), encoding: .utf8)) ?? "" }

    /// The value of an instant query that gives one number; nil while it gives none (not scraped yet).
    func query(_ promQL: String) async throws -> Double? {
        guard process.isRunning else { throw PrometheusEnded(log: log) }
        var components = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/query")!
        components.queryItems = [URLQueryItem(name: "query", value: promQL)]
        let response: HTTPClientResponse
        do { response = try await HTTPClient.shared.execute(HTTPClientRequest(url: components.url!.absoluteString), timeout: .seconds(5)) } catch {
            return nil  // not listening yet
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        struct Answer: Decodable {
            struct Data: Decodable {
                struct Sample: Decodable { var value: [Value] }
                var result: [Sample]
            }
            enum Value: Decodable {
                case time(Double), text(String)
                init(from decoder: any Decoder) throws {
                    let c = try decoder.singleValueContainer()
                    // A sample is [time, "value"]: a number, else the text (which must then decode).
                    if let d = try? c.decode(Double.self) { self = .time(d) } else { self = .text(try c.decode(String.self)) }
                }
            }
            var status: String
            var data: Data?
            var error: String?
        }
        let answer = try JSONDecoder().decode(Answer.self, from: Data(buffer: body))
        guard answer.status == "success" else { throw PrometheusEnded(log: "query \(promQL) failed: \(answer.error ?? "")") }
        guard let sample = answer.data?.result.first, case .text(let text) = sample.value.last else { return nil }
        return Double(text)
    }

    struct PrometheusEnded: Error, CustomStringConvertible {
        var log: String
        var description: String { "Prometheus: \(log.suffix(2000))" }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)  // a temporary directory: nothing to keep
    }
}

/// A span as an OTLP/HTTP JSON export carries it, with the service that exported it.
struct OTLPSpan: Sendable {
    var service: String
    var traceID: String
    var spanID: String
    var parentSpanID: String?
    var name: String
    var kind: Int
    var attributes: [String: String]
}

/// An OTLP/HTTP receiver of spans (JSON encoding) on a free loopback port, as a collector would be: it
/// answers `POST /v1/traces` with `{}` and keeps what it got.
final class OTLPReceiver: Sendable {
    let port: Int
    private let received = Mutex<[OTLPSpan]>([])
    var spans: [OTLPSpan] { received.withLock { $0 } }

    init(port: Int) { self.port = port }

    static func run(_ body: (OTLPReceiver) async throws -> Void) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                }
            }
        let receiver = OTLPReceiver(port: server.channel.localAddress?.port ?? 0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await withThrowingDiscardingTaskGroup { connections in
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            connections.addTask {
                                do { try await receiver.serve(connection) } catch {
                                    // A connection the exporter closed: nothing to keep from it.
                                }
                            }
                        }
                    }
                }
            }
            defer { group.cancelAll() }
            try await body(receiver)
        }
    }

    func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async throws {
        try await connection.executeThenClose { inbound, outbound in
            var path = ""
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let head):
                    path = head.uri
                    body.clear()
                case .body(var chunk):
                    body.writeBuffer(&chunk)
                case .end:
                    let ok = path == "/v1/traces"
                    if ok { try keep(Data(buffer: body)) }
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Content-Length", value: "2")
                    try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: ok ? .ok : .notFound, headers: headers)))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(string: "{}"))))
                    try await outbound.write(.end(nil))
                }
            }
        }
    }

    /// Reads an `ExportTraceServiceRequest` in JSON. swift-otel writes ids in base64 (SwiftProtobuf's bytes);
    /// the OTLP specification says hex: both are read.
    func keep(_ data: Data) throws {
        struct Request: Decodable {
            struct ResourceSpans: Decodable {
                var resource: Resource?
                var scopeSpans: [ScopeSpans]?
            }
            struct Resource: Decodable { var attributes: [KeyValue]? }
            struct ScopeSpans: Decodable { var spans: [Span]? }
            struct Span: Decodable {
                var traceId: String
                var spanId: String
                var parentSpanId: String?
                var name: String
                var kind: Int?
                var attributes: [KeyValue]?
            }
            struct KeyValue: Decodable {
                var key: String
                var value: AnyValue
            }
            struct AnyValue: Decodable {
                var stringValue: String?
                var intValue: String?
                var boolValue: Bool?
                var text: String? { stringValue ?? intValue ?? boolValue.map { String($0) } }
            }
            var resourceSpans: [ResourceSpans]?
        }
        func hex(_ id: String, bytes: Int) -> String {
            if id.count == bytes * 2, id.allSatisfy(\.isHexDigit) { return id.lowercased() }
            guard let d = Data(base64Encoded: id) else { return id }
            return d.map { String(format: "%02x", $0) }.joined()
        }
        let request = try JSONDecoder().decode(Request.self, from: data)
        var spans: [OTLPSpan] = []
        for resource in request.resourceSpans ?? [] {
            let service = resource.resource?.attributes?.first { $0.key == "service.name" }?.value.text ?? ""
            for scope in resource.scopeSpans ?? [] {
                for s in scope.spans ?? [] {
                    let attributes = Dictionary((s.attributes ?? []).compactMap { kv in kv.value.text.map { (kv.key, $0) } }) { a, _ in a }
                    spans.append(
                        OTLPSpan(
                            service: service, traceID: hex(s.traceId, bytes: 16), spanID: hex(s.spanId, bytes: 8),
                            parentSpanID: s.parentSpanId.flatMap { $0.isEmpty ? nil : hex($0, bytes: 8) }, name: s.name, kind: s.kind ?? 0,
                            attributes: attributes))
                }
            }
        }
        received.withLock { $0 += spans }
    }
}

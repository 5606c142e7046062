import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import Foundation
import Testing

extension OneAtATime {
    /// `baton tail` and `baton watch` as people run them: the built binary, against a coordinator and the example
    /// workers running as processes on the real broker, in a namespace of each test's own.
    @Suite("TailWatch: baton tail and baton watch on a running engine", .serialized, .timeLimit(.minutes(3)))
    struct TailWatchTests {
        static let pools = [
            "orders.validate", "inventory.reserve", "inventory.release", "payments.charge", "payments.refund", "shipping.create", "shipping.cancel",
            "notifications.email",
        ]
        static let steps = ["validate", "reserve", "charge", "ship", "notify"]

        /// Runs `body` with an engine that has examples/order-fulfillment.yaml registered, and a coordinator and the
        /// example workers as processes, warmed up (one order has gone through); all of it stopped after, also when
        /// `body` fails.
        func withWarmEngine(_ body: (Engine) async throws -> Void) async throws {
            try await withEngine(partitions: 3) { engine in
                _ = try await engine.client.register(document: Data(contentsOf: repositoryRoot.appendingPathComponent("examples/order-fulfillment.yaml")))
                let coordinator = try engine.process(["coordinator"])
                let workers = try engine.process(["example-workers"] + Self.pools.flatMap { ["--pool", $0] })
                defer { for p in [coordinator, workers] where p.isRunning { p.kill9() } }
                let warm = try await start(engine, "warm-up")
                try await engine.wait(warm, for: [.completed], timeout: .seconds(60))
                try await body(engine)
            }
        }

        /// Starts an order; one whose id contains `fail-charge` has its card declined on every attempt (the example
        /// workers' rule), then its reservation is released and it is suspended.
        @discardableResult
        func start(_ engine: Engine, _ id: String) async throws -> String {
            let input: JSON = [
                "order_id": .string(id), "items": [["sku": "book", "qty": 1]], "amount": 20, "currency": "EUR", "email": "c@example.com", "address": "1 Main Street",
            ]
            return try await engine.start("order_fulfillment_saga", input: input, id: id)
        }

        /// Waits for a `baton` process to exit, and returns its status.
        func exitStatus(of process: BatonProcess, _ what: String, within timeout: Duration = .seconds(30)) async throws -> Int32 {
            do {
                try await waitUntil("\(what) to exit", timeout: timeout) { !process.isRunning }
            } catch {
                Issue.record("\(what) is still running; its output so far:\n\(process.output.suffix(3000))")
                throw error
            }
            return await process.exitStatus()
        }

        func jsonLines(_ output: String) throws -> [[String: JSON]] {
            try output.split(separator: "\n").filter { $0.hasPrefix("{") }.map { try #require(JSON.parse(Data($0.utf8)).objectValue) }
        }

        @Test func tailPrintsEveryRecordDecodedAndWatchFollowsAnInstanceToItsEnd() async throws {
            try await withWarmEngine { engine in
                let ns = engine.names

                // Followed before they exist: `baton watch ID` waits for them.
                let ok = ["order-1", "order-2", "order-3"]
                let declined = "order-4-fail-charge"
                let watchOK = try engine.process(["watch", "order-2", "--wait", "60", "--log-level", "error"])
                let watchDeclined = try engine.process(["watch", declined, "--wait", "60", "--log-level", "error"])
                // New alerts, as they come, until SIGINT.
                let alerts = try engine.process(["tail", "alerts", "--follow", "--log-level", "error"])
                defer { for p in [watchOK, watchDeclined, alerts] where p.isRunning { p.kill9() } }
                for id in ok + [declined] { try await start(engine, id) }
                for id in ok { try await engine.wait(id, for: [.completed]) }
                try await engine.wait(declined, for: [.suspended])
                try await waitUntil("the alert about \(declined) from baton tail alerts --follow") { alerts.output.contains("  alert  \(declined)  severity=error  ") }
                #expect(alerts.isRunning)
                alerts.signal(SIGINT)
                #expect(try await exitStatus(of: alerts, "baton tail alerts --follow") == 0, "\(alerts.output)")
                #expect(alerts.output.contains("message=\"'charge' failed after 3 attempts: charge declined for \(declined) (attempt 3); compensated: reserve"), "\(alerts.output)")

                // The steps in order, each completion with its time, then how it ended; exit 0.
                #expect(try await exitStatus(of: watchOK, "baton watch order-2") == 0, "\(watchOK.output)")
                let lines = watchOK.output.split(separator: "\n").map(String.init)
                let completed = lines.filter { $0.contains(" completed in ") }.map { $0.split(separator: " ", omittingEmptySubsequences: true)[1] }
                #expect(completed == Self.steps.map { Substring($0) }, "\(watchOK.output)")
                #expect(lines.first?.hasSuffix("order-2: order_fulfillment_saga v1, running") == true, "\(watchOK.output)")
                #expect(lines.contains { $0.hasSuffix("instance completed") }, "\(watchOK.output)")
                #expect(lines.last?.hasPrefix("order-2: completed after ") == true, "\(watchOK.output)")
                // Declined three times, retried, its reservation released, suspended: exit 2.
                #expect(try await exitStatus(of: watchDeclined, "baton watch \(declined)") == 2, "\(watchDeclined.output)")
                let story = watchDeclined.output
                for expected in [
                    "charge  started (attempt 1)", "charge  attempt 1 failed: charge declined", "charge  started (attempt 3)",
                    "charge  failed in ", "instance compensating: 'charge' failed after 3 attempts", "reserve  compensating (attempt 1)", "reserve  compensated",
                    "instance suspended: ", "\(declined): suspended after ",
                ] {
                    #expect(story.contains(expected), "no '\(expected)' in:\n\(story)")
                }
                let order = ["validate  completed", "reserve  completed", "charge  attempt 1 failed", "reserve  compensated", "\(declined): suspended"].map {
                    story.range(of: $0)?.lowerBound
                }
                #expect(order.allSatisfy { $0 != nil } && order == order.sorted { ($0 ?? story.endIndex) < ($1 ?? story.endIndex) }, "out of order:\n\(story)")

                // Two records a coordinator refuses: dead-lettered with the reason, and shown so by both tails.
                let missing = #"{"v":1,"kind":"step.completed","instance_id":"bad-1","step":"charge"}"#
                for (key, value) in [("bad-1", Data(missing.utf8)), ("bad-2", Data("no json here".utf8))] {
                    try await engine.client.produce(ProducerRecord(topic: ns.events, partition: 0, key: Data(key.utf8), value: value))
                }
                try await waitUntil("both refused records on \(ns.deadletter)", timeout: .seconds(30)) { try await engine.records(ns.deadletter).count >= 2 }
                let deadletters = try await engine.baton(["tail", "deadletter"])
                #expect(deadletters.status == 0, "\(deadletters.output)")
                let eventsOffsets = try await engine.records(ns.events).filter { $0.partition == 0 && ["bad-1", "bad-2"].contains($0.keyString ?? "") }.map(\.offset)
                let letters = deadletters.output.split(separator: "\n").map(String.init)
                let first = try #require(letters.first { $0.contains("  deadletter  bad-1  ") }, "\(deadletters.output)")
                #expect(first.contains(#"reason=""#) && first.contains("field 'attempt' is missing"), "\(first)")
                #expect(first.contains("  origin=\(ns.events)[0]@\(eventsOffsets.min() ?? -1)  original_kind=step.completed  size=\(missing.utf8.count)"), "\(first)")
                let second = try #require(letters.first { $0.contains("  deadletter  bad-2  ") }, "\(deadletters.output)")
                #expect(second.contains("not a JSON object") && second.contains("  origin=\(ns.events)[0]@\(eventsOffsets.max() ?? -1)"), "\(second)")

                // Every record of the events topic, decoded; the refused ones as undecodable, with the reason.
                let events = try await engine.baton(["tail", "events", "--from", "beginning", "--json"])
                #expect(events.status == 0, "\(events.output.suffix(2000))")
                let records = try jsonLines(events.output)
                #expect(records.count == (try await engine.records(ns.events)).count)
                for record in records {
                    #expect(record["time"]?.stringValue?.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil, "\(record)")
                    #expect(record["topic"] == .string(ns.events) && record["partition"]?.intValue != nil && record["offset"]?.intValue != nil)
                    #expect(record["record"] != nil && record["record"] != .null)
                }
                func steps(_ kind: String, of id: String) -> [String] {
                    records.filter { $0["kind"] == .string(kind) && $0["instance_id"] == .string(id) }.compactMap { $0["step"]?.stringValue }
                }
                for id in ok { #expect(steps("step.completed", of: id) == Self.steps, "\(id)") }
                #expect(steps("step.completed", of: declined) == ["validate", "reserve"])
                #expect(records.filter { $0["kind"] == "step.failed" && $0["instance_id"] == .string(declined) }.compactMap { $0["attempt"]?.intValue } == [1, 2, 3])
                #expect(steps("compensation.completed", of: declined) == ["reserve"])
                let undecodable = records.filter { $0["kind"] == "undecodable" }
                #expect(undecodable.compactMap { $0["key"]?.stringValue } == ["bad-1", "bad-2"])
                #expect(undecodable.first?["undecodable"]?.stringValue?.contains("field 'attempt' is missing") == true, "\(undecodable)")

                // The state topic: every snapshot, the last of each instance saying how it ended.
                let state = try await engine.baton(["tail", "state"])
                #expect(state.status == 0, "\(state.output.suffix(2000))")
                let snapshots = state.output.split(separator: "\n").filter { $0.contains("  state  ") }
                for id in ok { #expect(snapshots.last { $0.contains("  state  \(id)  ") }?.contains("status=completed  steps=\"5/5 done\"") == true, "\(id):\n\(state.output)") }
                #expect(snapshots.last { $0.contains("  state  \(declined)  ") }?.contains("status=suspended") == true, "\(state.output)")

                // A pool's commands; a pool that has none is a clear error naming the topic.
                let charges = try await engine.baton(["tail", "commands", "payments.charge"])
                #expect(charges.output.split(separator: "\n").filter { $0.contains("  step.command  \(declined)  ") && $0.contains("pool=payments.charge") }.count == 3, "\(charges.output)")
                let unknown = try await engine.baton(["tail", "commands", "no.such.pool"])
                #expect(unknown.status != 0)
                #expect(unknown.output.contains("topic \(ns.commands("no.such.pool")) does not exist"), "\(unknown.output)")
            }
        }

        @Test func watchShowsStepsPerWorkflowInstancesLagAndAlertsFrameByFrame() async throws {
            try await withWarmEngine { engine in
                let frames = 10
                let watch = try engine.process(["watch", "--plain", "--frames", String(frames), "--interval", "1", "--log-level", "error"])
                defer { if watch.isRunning { watch.kill9() } }
                // Its first frame shows once it has read to the end of every partition: what comes after is counted.
                try await waitUntil("the first frame", timeout: .seconds(30)) { watch.output.contains("baton watch  \(engine.names.namespace)  ") }
                let ok = ["order-1", "order-2", "order-3"]
                let declined = "order-4-fail-charge"
                for id in ok + [declined] { try await start(engine, id) }
                for id in ok { try await engine.wait(id, for: [.completed]) }
                try await engine.wait(declined, for: [.suspended])
                #expect(try await exitStatus(of: watch, "baton watch", within: .seconds(40)) == 0, "\(watch.output.suffix(3000))")

                let shown = watch.output.components(separatedBy: "\n" + String(repeating: "-", count: 100) + "\n")
                #expect(shown.count == frames, "\(watch.output.suffix(3000))")
                let last = try #require(shown.last)
                let rows = last.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
                /// The total (since the watch started) of a column of a row: cells are rate/rate/total.
                func total(_ name: String, _ column: Int) -> Int? {
                    rows.first { $0.first == name }.flatMap { $0.count > column ? Int($0[column].split(separator: "/").last ?? "") : nil }
                }
                // WORKFLOW / STEP, STARTED, COMPLETED, FAILED, COMPENSATED, IN FLIGHT, P50, P99.
                #expect(total("order_fulfillment_saga", 2) == 3 * 5 + 2, "last frame:\n\(last)")
                // Every order validated and reserved; the declined one charged three times (STARTED counts attempts), never shipped.
                let completed = ["validate": 4, "reserve": 4, "charge": 3, "ship": 3, "notify": 3]
                for step in Self.steps { #expect(total(step, 2) == completed[step], "\(step) in the last frame:\n\(last)") }
                #expect(total("charge", 1) == 6, "last frame:\n\(last)")
                #expect(total("charge", 3) == 3, "last frame:\n\(last)")
                #expect(total("reserve", 4) == 1, "last frame:\n\(last)")
                #expect(rows.first { $0.first == "order_fulfillment_saga" }?[5] == "0", "nothing in flight at the end:\n\(last)")
                #expect(last.contains("order_fulfillment_saga") && last.contains("started 4  completed 3  failed 0  cancelled 0  suspended 1"), "last frame:\n\(last)")
                #expect(rows.contains { $0 == ["coordinators", "(events)", "0"] }, "last frame:\n\(last)")
                #expect(rows.contains { $0.prefix(2) == ["workers", "payments.charge"] }, "last frame:\n\(last)")
                #expect(last.contains("  error  \(declined) charge  'charge' failed after 3 attempts"), "last frame:\n\(last)")
            }
        }
    }
}

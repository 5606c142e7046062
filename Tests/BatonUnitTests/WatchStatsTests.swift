import BatonClient
import BatonCore
import BatonKafka
import BatonOperatorTools
import BatonWire
import Foundation
import Testing

/// `baton watch`'s figures, fed records and times by hand.
@Suite("TailWatch: the figures of baton watch")
struct TailWatchStatsTests {
    let t0: Int64 = 1_000_000
    let names = TopicNames(namespace: "ns")

    func command(_ instance: String, _ step: String, attempt: Int = 1, compensation: Bool = false, workflow: String = "w", deadline: Int64 = 2_000_000) throws -> WatchStats.Input {
        let kind = compensation ? "compensation.command" : "step.command"
        let json = """
            {"v":1,"kind":"\(kind)","instance_id":"\(instance)","workflow_id":"\(workflow)","workflow_version":1,"step":"\(step)","type":"svc","pool":"svc",
             "attempt":\(attempt),"input":{},"deadline":\(deadline),"idempotency_key":"k","reply_to":{"topic":"ns.events","partition":0}}
            """
        return .command(try Wire.decode(CommandMessage.self, from: Data(json.utf8)))
    }

    func result(_ kind: Wire.Kind, _ instance: String, _ step: String, attempt: Int = 1) -> WatchStats.Input {
        .result(ResultMessage(kind: kind, instanceID: instance, step: step, item: nil, attempt: attempt, error: kind == .stepFailed ? "boom" : nil, idempotencyKey: nil))
    }

    func row(_ frame: WatchFrame, _ name: String) throws -> WatchFrame.Row { try #require(frame.rows.first { $0.name == name }) }

    @Test func stepsAreCountedPerSecondOverTheIntervalAndTheWindowAndSinceTheStart() throws {
        var stats = WatchStats(startedAt: t0)
        // Four instances of w: each validate takes 100 ms more than the last; one charge fails, one is compensated.
        for i in 0..<4 {
            let sent = t0 + Int64(i) * 2000
            try stats.ingest(command("i\(i)", "validate"), at: sent)
            stats.ingest(result(.stepCompleted, "i\(i)", "validate"), at: sent + 100 * Int64(i + 1))
        }
        try stats.ingest(command("i0", "charge"), at: t0 + 7000)
        stats.ingest(result(.stepFailed, "i0", "charge"), at: t0 + 7010)
        try stats.ingest(command("i0", "validate", compensation: true), at: t0 + 7020)
        stats.ingest(result(.compensationCompleted, "i0", "validate"), at: t0 + 7030)
        try stats.ingest(command("i1", "charge"), at: t0 + 7100)

        let frame = stats.frame(now: t0 + 7500)
        let validate = try row(frame, "validate")
        #expect(validate.workflow == "w")
        #expect(validate.started.total == 4 && validate.completed.total == 4 && validate.compensated.total == 1)
        // Over the last second (7.5 s since the start): nothing started; over 7.5 s: 4.
        #expect(validate.started.perSecond == 0)
        #expect(abs(validate.started.windowPerSecond - 4 / 7.5) < 0.001)
        #expect(validate.p50 == 200 && validate.p99 == 400)
        #expect(validate.inFlight == 0)
        let charge = try row(frame, "charge")
        #expect(charge.started.total == 2 && charge.failed.total == 1 && charge.inFlight == 1)
        #expect(charge.started.perSecond == 2 && charge.failed.perSecond == 1)
        // The workflow's row sums its steps.
        let workflow = try row(frame, "w")
        #expect(workflow.workflow == nil)
        #expect(workflow.started.total == 6 && workflow.completed.total == 4 && workflow.failed.total == 1 && workflow.inFlight == 1)
        #expect(frame.rows.map(\.name) == ["w", "validate", "charge"])

        // Twenty seconds on, the window is empty; the totals stay.
        stats.prune(now: t0 + 27_500)
        let later = try row(stats.frame(now: t0 + 27_500), "validate")
        #expect(later.started.windowPerSecond == 0 && later.started.total == 4 && later.p50 == nil)
    }

    @Test func whatWasWrittenBeforeTheWatchStartedCountsForLagOnly() throws {
        var stats = WatchStats(startedAt: t0)
        stats.trackLag(of: names.commands("svc"), as: "workers svc")
        let old = try command("i1", "validate")
        guard case .command(let c) = old else { return }
        let m = KafkaMessage(topic: names.commands("svc"), partition: 0, offset: 10, key: nil, value: Wire.encode(c), timestamp: t0 - 5000)
        stats.ingest(m, names: names, now: t0 + 100)
        stats.ingest(result(.stepCompleted, "i1", "validate"), at: t0 - 4000)
        let frame = stats.frame(now: t0 + 100)
        #expect(frame.rows.isEmpty)
        #expect(stats.inFlightCount == 0)
        #expect(frame.lag.map { "\($0.name) \($0.topic) \($0.records)" } == ["workers svc ns.commands.svc 1"])
    }

    @Test func aResultReadBeforeItsCommandIsCountedOnceAndTimed() throws {
        var stats = WatchStats(startedAt: t0)
        stats.ingest(.start(StartMessage(instanceID: "i1", workflowID: "w", version: nil, input: [:], sentAt: nil)), at: t0 + 1)
        stats.ingest(result(.stepCompleted, "i1", "a"), at: t0 + 300)
        try stats.ingest(command("i1", "a"), at: t0 + 50)
        // An instance whose workflow is not known yet: its result waits for its command.
        stats.ingest(result(.stepCompleted, "i2", "a"), at: t0 + 400)
        try stats.ingest(command("i2", "a"), at: t0 + 100)
        let a = try row(stats.frame(now: t0 + 500), "a")
        #expect(a.started.total == 2 && a.completed.total == 2 && a.inFlight == 0)
        #expect(a.p50 == 250 && a.p99 == 300)
        #expect(stats.frame(now: t0 + 500).rows.map(\.name) == ["w", "a"])
    }

    @Test func instancesFinishedAreCountedByOutcomeOnceFromTheirSnapshots() throws {
        var stats = WatchStats(startedAt: t0)
        stats.ingest(.start(StartMessage(instanceID: "i1", workflowID: "w", version: nil, input: [:], sentAt: nil)), at: t0 + 1)
        stats.ingest(.state(instanceID: "i1", workflowID: "w", status: .running), at: t0 + 2)
        try stats.ingest(command("i1", "a"), at: t0 + 3)
        stats.ingest(.state(instanceID: "i1", workflowID: "w", status: .cancelled), at: t0 + 4)
        stats.ingest(.state(instanceID: "i1", workflowID: "w", status: .cancelled), at: t0 + 5)
        stats.ingest(.state(instanceID: "i2", workflowID: "w", status: .suspended), at: t0 + 6)
        stats.ingest(.state(instanceID: "i3", workflowID: "v", status: .completed), at: t0 + 7)
        stats.ingest(.state(instanceID: "i4", workflowID: "v", status: .completed), at: t0 - 7)
        let frame = stats.frame(now: t0 + 10)
        // Started, completed, failed, cancelled, suspended.
        #expect(frame.instances.map { "\($0.workflow): \($0.started) \($0.completed) \($0.failed) \($0.cancelled) \($0.suspended)" } == ["v: 0 1 0 0 0", "w: 1 0 0 1 1"])
        // Nothing is in flight for an instance that finished.
        #expect(stats.inFlightCount == 0)
    }

    @Test func lagCountsRecordsPastTheCommittedOffsetNotOffsets() {
        var stats = WatchStats(startedAt: t0)
        stats.trackLag(of: names.events, as: "coordinators (events)")
        // Offsets 5, 6 and 8: 7 is a transaction marker, which is no record to consume.
        for offset in [5, 6, 8] as [Int64] {
            stats.ingest(KafkaMessage(topic: names.events, partition: 1, offset: offset, key: nil, value: Data("x".utf8), timestamp: t0), names: names, now: t0)
        }
        stats.setCommitted([TopicPartition(names.events, 1): 5])
        #expect(stats.lag(of: names.events) == 3)
        stats.setCommitted([TopicPartition(names.events, 1): 7])
        #expect(stats.lag(of: names.events) == 1)
        stats.setCommitted([TopicPartition(names.events, 1): 9])
        #expect(stats.lag(of: names.events) == 0)
        // A group that committed nothing (-1001) has everything still to consume.
        stats.ingest(KafkaMessage(topic: names.events, partition: 2, offset: 0, key: nil, value: nil, timestamp: t0), names: names, now: t0)
        stats.setCommitted([TopicPartition(names.events, 2): -1001])
        #expect(stats.lag(of: names.events) == 1)
    }

    @Test func anAttemptPastItsDeadlineIsNoLongerInFlight() throws {
        var stats = WatchStats(startedAt: t0)
        try stats.ingest(command("i1", "a", deadline: t0 + 1000), at: t0 + 10)
        stats.prune(now: t0 + 500)
        #expect(stats.inFlightCount == 1)
        stats.prune(now: t0 + 1001)
        #expect(stats.inFlightCount == 0)
    }

    @Test func percentilesAreNearestRank() {
        #expect(WatchStats.percentile([], 0.5) == nil)
        #expect(WatchStats.percentile([7], 0.99) == 7)
        let hundred = (1...100).map(Int64.init)
        #expect(WatchStats.percentile(hundred, 0.5) == 50)
        #expect(WatchStats.percentile(hundred, 0.99) == 99)
        #expect(WatchStats.percentile([1, 2, 3], 0.5) == 2)
    }

    @Test func aFrameReadsAsATable() throws {
        var stats = WatchStats(startedAt: t0)
        stats.trackLag(of: names.events, as: "coordinators (events)")
        stats.trackLag(of: names.commands("svc"), as: "workers svc")
        try stats.ingest(command("i1", "validate", workflow: "order_fulfillment"), at: t0 + 100)
        stats.ingest(result(.stepCompleted, "i1", "validate"), at: t0 + 1100)
        stats.ingest(.alert(AlertRecord(alert: AlertMessage(severity: .error, instanceID: "i1", workflowID: "order_fulfillment", step: "charge", message: "'charge' failed"), at: t0 + 1200)), at: t0 + 1200)
        let text = stats.frame(now: t0 + 2000).render(namespace: "ns")
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0].hasPrefix("baton watch  ns  1970-01-01T00:16:42.000Z  (STARTED, COMPLETED, FAILED, COMPENSATED: per second over the last 1s / the last 10s / since the watch started)"))
        #expect(lines[1].split(separator: " ", omittingEmptySubsequences: true) == ["WORKFLOW", "/", "STEP", "STARTED", "COMPLETED", "FAILED", "COMPENSATED", "IN", "FLIGHT", "P50", "P99"])
        #expect(lines[2].split(separator: " ", omittingEmptySubsequences: true) == ["order_fulfillment", "0.0/0.5/1", "1.0/0.5/1", "0.0/0.0/0", "0.0/0.0/0", "0", "1.0s", "1.0s"])
        #expect(lines[3].hasPrefix("  validate "))
        #expect(text.contains("INSTANCES since the watch started\n  (none started or finished)"))
        #expect(lines.contains { $0.split(separator: " ", omittingEmptySubsequences: true) == ["coordinators", "(events)", "0"] })
        #expect(lines.contains { $0.split(separator: " ", omittingEmptySubsequences: true) == ["workers", "svc", "0"] })
        #expect(text.hasSuffix("ALERTS\n  1970-01-01T00:16:41.200Z  error  i1 charge  'charge' failed"))
    }
}

import BatonKafka
import BatonRuntime
import BatonTestSupport
import Logging
import Synchronization
import Testing

/// A partition as `FakeHandler` takes it.
struct FakePartition: Sendable, Equatable {
    /// Which successful take it came from (1 for the first), counted across the runners that share a script.
    var generation: Int
    /// The offset after the last committed batch (nil: nothing committed).
    var next: Int64?
}

/// What `FakeHandler` was asked to do.
enum FakeCall: Equatable, Sendable {
    case took(generation: Int)
    case takeFailed
    case commit([Int64], generation: Int, attempt: Int)
    case released(generation: Int)
    case alerted(AlertSeverity)
}

/// How `FakeHandler` answers, and what it was asked, in order. Shared by the runners' tasks and the test.
final class FakeScript: Sendable {
    struct State {
        /// Whether each next take works; once none are left, `takesWork`.
        var takes: [Bool] = []
        var takesWork = true
        /// How each next commit fails (nil: it works); once none are left, `commitsFail`.
        var commits: [CommitFailure?] = []
        var commitsFail: CommitFailure?
        var alertsDelivered = true
        /// The offset after the last committed batch, as the group would have it: where a take starts.
        var committed: Int64?
        var generation = 0
        var calls: [FakeCall] = []
        /// The offsets of the batches that committed, in order.
        var applied: [Int64] = []
        var alerts: [String] = []
    }
    let state: Mutex<State>

    init(_ configure: (inout State) -> Void = { _ in }) {
        var state = State()
        configure(&state)
        self.state = Mutex(state)
    }

    var calls: [FakeCall] { state.withLock { $0.calls } }
    var applied: [Int64] { state.withLock { $0.applied } }
    var alerts: [String] { state.withLock { $0.alerts } }
}

struct TakeFailed: Error {}

/// A commit failure `FakeScript` asked for, with what it calls for.
struct ScriptedFailure: Error {
    var failure: CommitFailure
}

/// A partition handler with no broker: it does what its script says and writes down what it was asked.
struct FakeHandler: PartitionHandler {
    let script: FakeScript
    let settings: PartitionSettings
    let logger = Logger(label: "baton.test.runner") { _ in SwiftLogNoOpLogHandler() }

    func take(_ tp: TopicPartition, inbox: PartitionInbox) async throws -> FakePartition {
        let taken = script.state.withLock { s -> FakePartition? in
            guard s.takes.isEmpty ? s.takesWork : s.takes.removeFirst() else {
                s.calls.append(.takeFailed)
                return nil
            }
            s.generation += 1
            s.calls.append(.took(generation: s.generation))
            return FakePartition(generation: s.generation, next: s.committed)
        }
        guard let taken else { throw TakeFailed() }
        return taken
    }

    func nextOffset(_ partition: FakePartition) -> Int64? { partition.next }

    func release(_ partition: FakePartition) async {
        script.state.withLock { $0.calls.append(.released(generation: partition.generation)) }
    }

    func between(_ partition: inout FakePartition, inbox: PartitionInbox) async -> Duration { .seconds(60) }

    /// The tries of the batch so far.
    func newAttempt() -> Int { 0 }

    func commit(_ batch: [KafkaMessage], to partition: inout FakePartition, attempt: inout Int) async throws {
        let offsets = batch.map(\.offset)
        let call = FakeCall.commit(offsets, generation: partition.generation, attempt: attempt)
        let failure = script.state.withLock { s -> CommitFailure? in
            s.calls.append(call)
            let failure = s.commits.isEmpty ? s.commitsFail : s.commits.removeFirst()
            if failure == nil, let last = offsets.last {
                s.applied += offsets
                s.committed = last + 1
            }
            return failure
        }
        if let failure { throw ScriptedFailure(failure: failure) }
        if let last = offsets.last { partition.next = last + 1 }
    }

    func failure(_ error: any Error, of partition: FakePartition, attempt: inout Int) -> CommitFailure {
        attempt += 1
        return (error as? ScriptedFailure)?.failure ?? .backOff
    }

    func alert(_ tp: TopicPartition, severity: AlertSeverity, _ message: String) async -> Bool {
        script.state.withLock { s in
            s.calls.append(.alerted(severity))
            s.alerts.append(message)
            return s.alertsDelivered
        }
    }
}

/// `PartitionRunner` driven by `FakeHandler`, with the test as its poll loop: it delivers records, seeks when asked
/// (`resetDone`), and stops the runner. Backoffs are a few milliseconds unless a test needs a long one; idle waits
/// are 60 s, so a runner that misses a wake fails the test's 30 s deadline rather than finding its work late.
@Suite("PartitionRunner: take, apply in batches, retry, take anew, release", .timeLimit(.minutes(3)))
struct PartitionRunnerTests {
    typealias Runner = PartitionRunner<FakeHandler>
    static let tp = TopicPartition("ns.events", 5)
    static let quick = Backoff(first: .milliseconds(1), max: .milliseconds(4))
    static let long = Backoff(first: .seconds(60), max: .seconds(60))

    static func handler(
        _ script: FakeScript, maxBatch: Int = 10, gapRereads: Bool = false, backoff: Backoff = quick, alertAfterFailures: Int = 1000,
        retakeAfterFailures: Int? = nil
    ) -> FakeHandler {
        let retry = RetryPolicy(backoff: backoff, alertAfterFailures: alertAfterFailures, alertAfter: .seconds(3600), retakeAfterFailures: retakeAfterFailures)
        let settings = PartitionSettings(
            maxBatch: maxBatch, idleWait: .seconds(60), maxBacklog: 1000, maxPollInterval: .seconds(30), stopTimeout: .seconds(30),
            gapRereads: gapRereads, retry: retry, name: "test")
        return FakeHandler(script: script, settings: settings)
    }

    func deliver(_ offsets: some Sequence<Int64>, to runner: Runner) {
        for offset in offsets {
            runner.inbox.deliver(KafkaMessage(topic: Self.tp.topic, partition: Self.tp.partition, offset: offset, key: nil, value: nil))
        }
    }

    /// Runs `runner` while `body` runs, then stops it and expects it to end within 30 s (cancelling it if not).
    func running(_ runner: Runner, _ body: () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run() }
            do { try await body() } catch {
                group.cancelAll()
                throw error
            }
            runner.inbox.stop()
            let ended = await runner.inbox.finished(before: .now + .seconds(30))
            #expect(ended, "the runner ends within 30 s of its stop")
            if !ended { group.cancelAll() }
        }
    }

    /// Plays the poll loop's seek: waits until the runner asks to read again, expects it from `offset`, and says it
    /// is done.
    func seek(_ runner: Runner, expecting offset: Int64) async throws {
        try await waitUntil("the runner asks to read again", timeout: .seconds(30)) { runner.inbox.pendingReset != nil }
        #expect(runner.inbox.pendingReset == offset)
        runner.inbox.resetDone()
    }

    // MARK: Applying records

    @Test func batchesAreCommittedInOffsetOrderAndThePartitionIsReleasedWhenStopped() async throws {
        let script = FakeScript()
        let readiness = PartitionReadiness()
        readiness.joined()
        readiness.taking(Self.tp)
        let runner = Runner(Self.tp, handler: Self.handler(script, maxBatch: 2), readiness: readiness)
        deliver(0..<5, to: runner)
        #expect(!readiness.isReady)
        try await running(runner) {
            try await waitUntil("five records applied", timeout: .seconds(30)) { script.applied.count == 5 }
            #expect(readiness.isReady, "the partition was taken")
            // A record read while the runner waits for work wakes it.
            deliver([5], to: runner)
            try await waitUntil("the sixth record applied", timeout: .seconds(30)) { script.applied.count == 6 }
        }
        #expect(
            script.calls == [
                .took(generation: 1),
                .commit([0, 1], generation: 1, attempt: 0), .commit([2, 3], generation: 1, attempt: 0), .commit([4], generation: 1, attempt: 0),
                .commit([5], generation: 1, attempt: 0),
                .released(generation: 1),
            ])
        #expect(script.applied == [0, 1, 2, 3, 4, 5])
    }

    @Test func aTakeThatFailsIsTriedAgainAndTheOnCallHearsWhenItGoesOnAndWhenItWorksAgain() async throws {
        let script = FakeScript { $0.takes = [false, false] }
        let handler = Self.handler(script, alertAfterFailures: 2)
        let runner = Runner(Self.tp, handler: handler, readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await waitUntil("the record applied", timeout: .seconds(30)) { script.applied == [0] }
        }
        #expect(
            script.calls == [
                .takeFailed, .takeFailed, .alerted(.critical), .took(generation: 1), .alerted(.warning), .commit([0], generation: 1, attempt: 0),
                .released(generation: 1),
            ])
        let alerts = script.alerts
        #expect(alerts.count == 2)
        let partition = handler.describe(Self.tp)
        #expect(alerts.first?.hasPrefix("test cannot take \(partition): 2 tries failed") == true, "\(alerts)")
        #expect(alerts.last?.hasPrefix("test takes \(partition) again after 2 failed tries") == true, "\(alerts)")
    }

    @Test func aCommitThatFailsIsTriedAgainOnTheSameBatchAndTheOnCallHearsWhenItWorksAgain() async throws {
        let script = FakeScript { $0.commits = [.backOff, .backOff] }
        let handler = Self.handler(script, alertAfterFailures: 2)
        let runner = Runner(Self.tp, handler: handler, readiness: PartitionReadiness())
        deliver([0, 1], to: runner)
        try await running(runner) {
            try await waitUntil("the batch applied", timeout: .seconds(30)) { script.applied == [0, 1] }
        }
        #expect(
            script.calls == [
                .took(generation: 1),
                .commit([0, 1], generation: 1, attempt: 0), .commit([0, 1], generation: 1, attempt: 1), .alerted(.critical),
                .commit([0, 1], generation: 1, attempt: 2), .alerted(.warning),
                .released(generation: 1),
            ])
        let alerts = script.alerts
        let partition = handler.describe(Self.tp)
        #expect(alerts.first?.hasPrefix("test cannot commit \(partition): 2 tries failed") == true, "\(alerts)")
        #expect(alerts.last?.hasPrefix("test commits \(partition) again after 2 failed tries") == true, "\(alerts)")
    }

    @Test func anAlertThatWasNotDeliveredIsSentAgainAndNoWorksAgainFollows() async throws {
        let script = FakeScript {
            $0.commits = [.backOff, .backOff, .backOff]
            $0.alertsDelivered = false
        }
        let runner = Runner(Self.tp, handler: Self.handler(script, alertAfterFailures: 2), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await waitUntil("the first batch applied", timeout: .seconds(30)) { script.applied == [0] }
            // The next batch shows that nothing was sent after the first one committed.
            deliver([1], to: runner)
            try await waitUntil("the second batch applied", timeout: .seconds(30)) { script.applied == [0, 1] }
        }
        #expect(
            script.calls == [
                .took(generation: 1),
                .commit([0], generation: 1, attempt: 0), .commit([0], generation: 1, attempt: 1), .alerted(.critical),
                .commit([0], generation: 1, attempt: 2), .alerted(.critical), .commit([0], generation: 1, attempt: 3),
                .commit([1], generation: 1, attempt: 0),
                .released(generation: 1),
            ])
    }

    @Test func tryAgainNowRetriesAtOnceWithoutCountingAFailure() async throws {
        // A failure would wait a minute and alert at once.
        let script = FakeScript { $0.commits = [.tryAgainNow, .tryAgainNow] }
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long, alertAfterFailures: 1), readiness: PartitionReadiness())
        deliver([0, 1], to: runner)
        try await running(runner) {
            try await waitUntil("the batch applied", timeout: .seconds(30)) { script.applied == [0, 1] }
        }
        #expect(
            script.calls == [
                .took(generation: 1),
                .commit([0, 1], generation: 1, attempt: 0), .commit([0, 1], generation: 1, attempt: 1), .commit([0, 1], generation: 1, attempt: 2),
                .released(generation: 1),
            ])
    }

    @Test func aHeldWriteWaitsUntilTheGateOpensWithoutCountingAFailure() async throws {
        let opens = ContinuousClock.now + .milliseconds(50)
        let script = FakeScript { $0.commits = [.hold(reason: "frozen", openUntil: { opens > .now ? opens : nil })] }
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long, alertAfterFailures: 1), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await waitUntil("the batch applied", timeout: .seconds(30)) { script.applied == [0] }
            #expect(ContinuousClock.now >= opens)
        }
        #expect(
            script.calls == [
                .took(generation: 1), .commit([0], generation: 1, attempt: 0), .commit([0], generation: 1, attempt: 1), .released(generation: 1),
            ])
    }

    // MARK: Taking anew

    @Test func aLostProducerReleasesThePartitionTakesItAnewAndReadsAgainFromWhatCommitted() async throws {
        let script = FakeScript {
            $0.committed = 10
            $0.commits = [.takeAnew(reason: "fenced")]
        }
        let runner = Runner(Self.tp, handler: Self.handler(script, gapRereads: true), readiness: PartitionReadiness())
        runner.inbox.observeEnd(12)
        deliver([10, 11], to: runner)
        try await running(runner) {
            try await waitUntil("the partition taken anew", timeout: .seconds(30)) { runner.inbox.pendingReset != nil && !runner.inbox.knowsEnd }
            #expect(runner.inbox.pendingReset == 10, "read again from the new partition's next offset")
            #expect(
                script.calls == [
                    .took(generation: 1), .commit([10, 11], generation: 1, attempt: 0), .released(generation: 1), .took(generation: 2),
                ])
            // Read before the seek: dropped.
            deliver([12], to: runner)
            #expect(runner.inbox.backlog == 0)
            runner.inbox.resetDone()
            // Read again from 10: the gap guard expects 10 again, so these are applied, not dropped as seen before.
            deliver([10, 11, 12], to: runner)
            try await waitUntil("the records read again applied", timeout: .seconds(30)) { script.applied == [10, 11, 12] }
        }
        let calls = script.calls
        #expect(calls.dropFirst(4).allSatisfy { if case .commit(_, generation: 2, attempt: 0) = $0 { true } else { $0 == .released(generation: 2) } }, "\(calls)")
        #expect(calls.last == .released(generation: 2))
    }

    @Test func failuresPastRetakeAfterFailuresTakeThePartitionAnew() async throws {
        let script = FakeScript { $0.commits = [.backOff, .backOff] }
        let runner = Runner(Self.tp, handler: Self.handler(script, retakeAfterFailures: 2), readiness: PartitionReadiness())
        deliver([0, 1], to: runner)
        try await running(runner) {
            // Nothing committed: read again from the beginning.
            try await seek(runner, expecting: TopicPartitionOffset.beginning)
            deliver([0, 1], to: runner)
            try await waitUntil("the batch applied", timeout: .seconds(30)) { script.applied == [0, 1] }
        }
        let calls = script.calls
        #expect(
            calls.prefix(5) == [
                .took(generation: 1), .commit([0, 1], generation: 1, attempt: 0), .commit([0, 1], generation: 1, attempt: 1), .released(generation: 1),
                .took(generation: 2),
            ])
        #expect(calls.last == .released(generation: 2))
        #expect(script.alerts.isEmpty)
    }

    // MARK: Stopping

    @Test func aStopDuringABackoffEndsTheRunnerPromptlyAndReleasesThePartition() async throws {
        let script = FakeScript { $0.commitsFail = .backOff }
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await waitUntil("a commit failed", timeout: .seconds(30)) { script.calls.contains(.commit([0], generation: 1, attempt: 0)) }
            let clock = ContinuousClock()
            let stopped = clock.now
            runner.inbox.stop()
            #expect(await runner.inbox.finished(before: stopped + .seconds(30)))
            #expect(clock.now - stopped < .seconds(30))
        }
        #expect(script.calls == [.took(generation: 1), .commit([0], generation: 1, attempt: 0), .released(generation: 1)])
        #expect(script.applied.isEmpty)
    }

    @Test func aStopWhileTheTakeKeepsFailingEndsTheRunnerWithNothingToRelease() async throws {
        let script = FakeScript { $0.takesWork = false }
        let readiness = PartitionReadiness()
        readiness.joined()
        readiness.taking(Self.tp)
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long), readiness: readiness)
        try await running(runner) {
            try await waitUntil("a take failed", timeout: .seconds(30)) { script.calls.contains(.takeFailed) }
        }
        #expect(script.calls == [.takeFailed])
        #expect(!readiness.isReady)
    }

    @Test func cancellingTheRunnersTaskEndsItLikeAStop() async throws {
        let script = FakeScript { $0.commitsFail = .backOff }
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long), readiness: PartitionReadiness())
        deliver([0], to: runner)
        let clock = ContinuousClock()
        let ran = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await runner.run() }
            try await waitUntil("a commit failed", timeout: .seconds(30)) { script.calls.contains(.commit([0], generation: 1, attempt: 0)) }
            let cancelled = clock.now
            group.cancelAll()
            try await group.waitForAll()
            return clock.now - cancelled
        }
        #expect(ran < .seconds(30))
        #expect(script.calls.last == .released(generation: 1))
        #expect(await runner.inbox.finished(before: .now + .seconds(30)))
    }

    @Test func aRunnerMadeAfterAPredecessorTakesOnlyOnceThePredecessorHasEnded() async throws {
        let script = FakeScript()
        let readiness = PartitionReadiness()
        let first = Runner(Self.tp, handler: Self.handler(script), readiness: readiness)
        let second = Runner(Self.tp, handler: Self.handler(script), readiness: readiness, after: first)
        try await running(first) {
            try await waitUntil("the first runner took", timeout: .seconds(30)) { script.calls == [.took(generation: 1)] }
            try await running(second) {
                // Time for a runner that does not wait to take; a right one is waiting for `first` meanwhile.
                try await Task.sleep(for: .milliseconds(100))
                #expect(script.calls == [.took(generation: 1)])
                first.inbox.stop()
                try await waitUntil("the second runner took", timeout: .seconds(30)) { script.calls.contains(.took(generation: 2)) }
            }
        }
        #expect(script.calls == [.took(generation: 1), .released(generation: 1), .took(generation: 2), .released(generation: 2)])
    }

    // MARK: Across retakes

    @Test func aRunnerStoppedBeforeItCouldTakeThePartitionAnewReleasesTheOldOneOnce() async throws {
        let script = FakeScript {
            $0.takes = [true]
            $0.takesWork = false
            $0.commits = [.takeAnew(reason: "fenced")]
        }
        let runner = Runner(Self.tp, handler: Self.handler(script, backoff: Self.long), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await waitUntil("taking anew failed", timeout: .seconds(30)) { script.calls.contains(.takeFailed) }
        }
        #expect(script.calls == [.took(generation: 1), .commit([0], generation: 1, attempt: 0), .released(generation: 1), .takeFailed])
    }

    @Test func commitFailuresThatGoOnAcrossRetakesAlertTheOnCall() async throws {
        let script = FakeScript { $0.commitsFail = .backOff }
        let runner = Runner(Self.tp, handler: Self.handler(script, alertAfterFailures: 3, retakeAfterFailures: 2), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            for _ in 1...2 {
                try await seek(runner, expecting: TopicPartitionOffset.beginning)
                deliver([0], to: runner)
            }
            try await waitUntil("five commits tried", timeout: .seconds(30)) { script.calls.filter { if case .commit = $0 { true } else { false } }.count >= 5 }
        }
        #expect(script.calls.contains(.alerted(.critical)), "\(script.calls)")
    }

    @Test func theOnCallAlertedBeforeARetakeHearsWhenCommitsWorkAgain() async throws {
        let script = FakeScript { $0.commits = [.backOff, .backOff, .backOff] }
        let runner = Runner(Self.tp, handler: Self.handler(script, alertAfterFailures: 2, retakeAfterFailures: 3), readiness: PartitionReadiness())
        deliver([0], to: runner)
        try await running(runner) {
            try await seek(runner, expecting: TopicPartitionOffset.beginning)
            deliver([0], to: runner)
            try await waitUntil("the batch applied", timeout: .seconds(30)) { script.applied == [0] }
        }
        #expect(script.calls.contains(.alerted(.critical)))
        #expect(script.calls.contains(.alerted(.warning)), "\(script.calls)")
    }
}

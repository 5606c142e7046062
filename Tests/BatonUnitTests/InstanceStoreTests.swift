@testable import BatonCoordinator
@testable import BatonCore
import BatonPlanning
import Foundation
import Testing

/// A coordinator's instances: running ones decoded, waiting ones encoded, the same states either way.
@Suite("InstanceStore: the instances of an owned partition")
struct InstanceStoreTests {
    /// An instance with something in every part of the state, so that a round trip through the encoded form
    /// has something to lose.
    func instance(_ id: String, workflow: String = "order", status: InstanceStatus) -> InstanceState {
        var unit = UnitState()
        unit.status = .completed
        unit.attempt = 2
        unit.output = .object(["total": .number(42.5), "items": .array([.string("a"), .null, .bool(true)])])
        unit.completedSeq = 1
        unit.compensation = .done
        unit.progress = .object(["pct": .number(90)])
        unit.heartbeatAt = 1_700_000_000_500
        var reserve = StepState()
        reserve.status = .completed
        reserve.units = [unit]
        reserve.output = unit.output
        reserve.completedSeq = 1
        reserve.startedAt = 1_700_000_000_000
        reserve.finishedAt = 1_700_000_001_000
        var approve = StepState()
        approve.status = .active
        var task = UnitState()
        task.status = .running
        task.attempt = 1
        task.task = HumanTask(
            taskID: "t-\(id)", instanceID: id, workflowID: workflow, step: "approve", attempt: 1, assignee: "role:manager", title: "Approve",
            input: .object(["amount": .number(120)]), createdAt: 1_700_000_001_000, dueAt: 1_700_086_401_000, claimedBy: "user:ann")
        approve.units = [task]
        var state = InstanceState(
            instanceID: id, workflowID: workflow, version: 3, status: status, input: .object(["customer": .string("c-1")]),
            startedAt: 1_700_000_000_000, steps: [reserve, approve])
        state.deadline = 1_700_100_000_000
        state.timers = [ArmedTimer(key: TimerKey(kind: .taskTimeout, step: 1, attempt: 1), dueAt: 1_700_086_401_000)]
        state.completionCounter = 1
        state.requests = ["r-1", "r-2"]
        state.generation = 1
        state.startRequest = "start-\(id)"
        state.trace = ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        state.signals = ["nudge": .object(["by": .string("ops")])]
        return state
    }

    /// The ids of the instances the store keeps encoded. Its representation is private (callers see states
    /// only), but keeping waiting instances compact is what it is for, so the tests look at it through a mirror.
    func encodedIDs(_ store: InstanceStore) throws -> Set<String> {
        let idle = try #require(Mirror(reflecting: store).descendant("idle") as? [String: Data], "InstanceStore keeps its encoded instances in `idle`")
        return Set(idle.keys)
    }

    /// Every instance as `forEachStatus` reports it.
    func statuses(_ store: InstanceStore) -> [String: [InstanceStatus]] {
        var found: [String: [InstanceStatus]] = [:]
        store.forEachStatus { workflowID, status in found[workflowID, default: []].append(status) }
        return found.mapValues { $0.sorted { $0.rawValue < $1.rawValue } }
    }

    @Test(arguments: InstanceStatus.allCases)
    func onlyRunningAndCompensatingInstancesAreKeptDecoded(status: InstanceStatus) {
        #expect(InstanceStore.keepsEncoded(status) == !(status == .running || status == .compensating))
    }

    @Test func anEmptyStoreHoldsNothing() {
        let store = InstanceStore()
        #expect(store.count == 0)
        #expect(store["missing"] == nil)
        #expect(statuses(store).isEmpty)
    }

    @Test(arguments: [InstanceStatus.waiting, .suspended, .completed, .failed, .cancelled])
    func anInstanceInsertedWhileItWaitsIsKeptEncodedAndReadsBackEqual(status: InstanceStatus) throws {
        var store = InstanceStore()
        let state = instance("i-1", status: status)
        store.insert(state)
        #expect(try encodedIDs(store) == ["i-1"])
        #expect(store.count == 1)
        #expect(store["i-1"] == state)
    }

    @Test(arguments: [InstanceStatus.running, .compensating])
    func anInstanceInsertedWhileItRunsIsKeptDecoded(status: InstanceStatus) throws {
        var store = InstanceStore()
        let state = instance("i-1", status: status)
        store.insert(state)
        #expect(try encodedIDs(store).isEmpty)
        #expect(store.count == 1)
        #expect(store["i-1"] == state)
    }

    @Test func readingAnEncodedInstanceLeavesItEncoded() throws {
        var store = InstanceStore()
        let state = instance("i-1", status: .waiting)
        store.insert(state)
        #expect(store["i-1"] == state)
        #expect(store["i-1"] == state)
        #expect(try encodedIDs(store) == ["i-1"])
    }

    @Test func thawKeepsAnInstanceDecodedUntilItSettles() throws {
        var store = InstanceStore()
        let state = instance("i-1", status: .waiting)
        store.insert(state)
        store.thaw("i-1")
        #expect(try encodedIDs(store).isEmpty)
        #expect(store["i-1"] == state)
        #expect(store.count == 1)
        store.settle("i-1")
        #expect(try encodedIDs(store) == ["i-1"])
        #expect(store["i-1"] == state)
        #expect(store.count == 1)
    }

    @Test func anInstanceThatRunsAgainStaysDecodedWhenSettled() throws {
        var store = InstanceStore()
        store.insert(instance("i-1", status: .waiting))
        store.thaw("i-1")
        store["i-1"]?.status = .running
        store.settle("i-1")
        #expect(try encodedIDs(store).isEmpty)
        #expect(store["i-1"]?.status == .running)
        // It finishes: the next settle encodes it.
        store["i-1"]?.status = .completed
        store.settle("i-1")
        #expect(try encodedIDs(store) == ["i-1"])
        #expect(store["i-1"]?.status == .completed)
    }

    @Test func changingAnEncodedInstanceKeepsTheChangeAndNoStaleCopy() throws {
        var store = InstanceStore()
        store.insert(instance("i-1", status: .suspended))
        store["i-1"]?.status = .running
        store["i-1"]?.reason = "resumed"
        #expect(store.count == 1)
        #expect(store["i-1"]?.status == .running)
        #expect(store["i-1"]?.reason == "resumed")
        #expect(try encodedIDs(store).isEmpty)
        #expect(statuses(store) == ["order": [.running]])
    }

    @Test func assigningAStateKeepsItDecodedUntilSettledWhateverItsStatus() throws {
        var store = InstanceStore()
        let state = instance("i-1", status: .completed)
        store["i-1"] = state
        #expect(try encodedIDs(store).isEmpty)
        #expect(store["i-1"] == state)
        store.settle("i-1")
        #expect(try encodedIDs(store) == ["i-1"])
        #expect(store["i-1"] == state)
    }

    @Test func settlingOrThawingAnInstanceNotHeldDoesNothing() throws {
        var store = InstanceStore()
        store.insert(instance("i-1", status: .running))
        store.settle("missing")
        store.thaw("missing")
        store.thaw("i-1")
        #expect(store.count == 1)
        #expect(store["missing"] == nil)
        #expect(store["i-1"]?.status == .running)
        #expect(try encodedIDs(store).isEmpty)
    }

    @Test func assigningNilRemovesAnInstanceInEitherForm() throws {
        var store = InstanceStore()
        store.insert(instance("waits", status: .waiting))
        store.insert(instance("runs", status: .running))
        store.insert(instance("stays", status: .completed))
        #expect(store.count == 3)
        store["waits"] = nil
        store["runs"] = nil
        #expect(store.count == 1)
        #expect(store["waits"] == nil)
        #expect(store["runs"] == nil)
        #expect(store["stays"]?.status == .completed)
        #expect(try encodedIDs(store) == ["stays"])
        #expect(statuses(store) == ["order": [.completed]])
        // A removed instance does not come back when thawed or settled.
        store.thaw("waits")
        store.settle("runs")
        #expect(store.count == 1)
    }

    @Test func everyInstanceIsReportedOnceWithItsWorkflowAndStatusInEitherForm() {
        var store = InstanceStore()
        store.insert(instance("a", workflow: "order", status: .running))
        store.insert(instance("b", workflow: "order", status: .waiting))
        store.insert(instance("c", workflow: "order", status: .waiting))
        store.insert(instance("d", workflow: "refund", status: .compensating))
        store.insert(instance("e", workflow: "refund", status: .failed))
        store.insert(instance("f", workflow: "refund", status: .cancelled))
        store["g"] = instance("g", workflow: "ship", status: .suspended)
        #expect(store.count == 7)
        #expect(
            statuses(store) == [
                "order": [.running, .waiting, .waiting],
                "refund": [.cancelled, .compensating, .failed],
                "ship": [.suspended],
            ])
    }

    @Test func aChangedStatusIsReportedAfterTheInstanceSettles() {
        var store = InstanceStore()
        store.insert(instance("a", status: .waiting))
        store.thaw("a")
        store["a"]?.status = .completed
        store.settle("a")
        #expect(statuses(store) == ["order": [.completed]])
    }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonRuntime
import BatonTestSupport
import BatonWire
import Foundation
import Testing

@Suite("Instance watcher: a state is shown with its outputs", .timeLimit(.minutes(2)))
struct WatcherTests {
    /// A snapshot and the outputs it refers to are written in one transaction but on two topics, fetched apart:
    /// the watcher shows a completed step only once it has read its output (a waiter that sees `completed` reads
    /// the output), and a snapshot whose output never comes is shown without it after a grace period.
    @Test func aCompletedStepIsShownOnlyWithItsOutputOrAfterTheGrace() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("""
                workflow_id: one
                steps: [{ id: a, type: t }]
                """)
            engine.startCoordinator()
            engine.startWorker("t") { _ in ["n": 1] }
            let done = try await engine.wait(try await engine.start("one", id: "done"), for: [.completed])
            #expect(done.steps[0].output == ["n": 1])

            // The same snapshot under other ids, written as the state topic holds it (without outputs), with a
            // marker behind them on the same partition: once the marker is shown, the watcher has read them.
            func write(_ id: String, outputs: Bool) async throws {
                var copy = done
                copy.instanceID = id
                let value = outputs ? StateCodec.encode(copy) : StateCodec.encodeSnapshot(copy)
                _ = try await engine.client.produce(ProducerRecord(topic: engine.names.state, partition: 0, key: Data(id.utf8), value: value))
            }
            try await write("early", outputs: false)
            try await write("gone", outputs: false)
            try await write("marker", outputs: true)
            try await waitUntil("the marker to be shown", timeout: .seconds(30)) { engine.watcher.status("marker") == .completed }
            #expect(engine.watcher.state("marker")?.steps[0].output == ["n": 1])
            #expect(engine.watcher.status("early") == nil, "a completed step was shown before its output was read")
            #expect(engine.watcher.state("early") == nil)

            let output = OutputRecord(instanceID: "early", step: "a", item: 0, attempt: done.steps[0].units[0].attempt, output: ["n": 2])
            _ = try await engine.client.produce(
                ProducerRecord(topic: engine.names.outputs, partition: 0, key: Data(output.key.utf8), value: Wire.encode(output)))
            let early = try await engine.wait("early", for: [.completed], timeout: .seconds(30))
            #expect(early.steps[0].output == ["n": 2])

            let gone = try await engine.wait("gone", for: [.completed], timeout: .seconds(30))
            #expect(gone.steps[0].output == nil)
        }
    }
}

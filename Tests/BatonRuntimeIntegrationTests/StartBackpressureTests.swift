import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import Foundation
import Synchronization
import Testing

/// Starts wait while the coordinators are behind on their events partition, and only then: on the real broker,
/// with the coordinators' progress played by commits of their group's offset (a coordinator's pace cannot be set).
@Suite("Busy is not broken: starts wait for coordinators that are behind", .serialized, .timeLimit(.minutes(3)))
struct StartBackpressureTests {
    @Test func aStartWaitsForCoordinatorsBehindAndGoesWhenTheyCatchUpOrStop() async throws {
        try await withEngine(partitions: 1) { engine in
            let tp = TopicPartition(engine.names.events, 0)
            // 2,000 starts queued with nothing holding them (no coordinator runs: nothing is applied).
            let filler = try BatonClient(client: engine.kafka, names: engine.names, admission: .off, logger: TestKafka.logger)
            for i in 0..<2000 { try await filler.start(workflowID: "queued", input: [:], instanceID: "q\(i)", partitions: 1, wait: false) }
            try await filler.flush()
            let settings = StartAdmissionSettings(maxDelay: .seconds(2), maxWait: .seconds(3), interval: .milliseconds(200), window: .seconds(3))
            let held = try BatonClient(client: engine.kafka, names: engine.names, admission: settings, logger: TestKafka.logger)
            // The coordinators' group, committing 50 events every 250 ms (200/s): about 10 s behind.
            let group = try KafkaConsumer(configuration: KafkaConsumerConfiguration(client: engine.kafka, groupID: engine.names.coordinatorGroup), logger: TestKafka.logger)
            do {
                try await Self.check(engine, filler: filler, held: held, group: group, tp: tp)
            } catch {
                await group.close()
                throw error
            }
            await group.close()
            await held.close()
            await filler.close()
        }
    }

    static func check(_ engine: Engine, filler: BatonClient, held: BatonClient, group: KafkaConsumer, tp: TopicPartition) async throws {
        let pace = Pace()
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                while !Task.isCancelled {
                    try await group.commit([TopicPartitionOffset(tp, offset: pace.advance(by: 50))])
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
            // The client judges once its readings span a second: starts sent before that go at once. Then one is
            // held for its BATON_START_MAX_WAIT and refused.
            var refused: (id: String, waited: Duration, error: ClientError)?
            var sent: [String] = []
            let deadline = ContinuousClock.now + .seconds(20)
            while refused == nil, ContinuousClock.now < deadline {
                let id = "held-\(sent.count + 1)"
                let began = ContinuousClock.now
                do {
                    try await held.start(workflowID: "late", input: [:], instanceID: id, partitions: 1)
                    sent.append(id)
                    try await Task.sleep(for: .milliseconds(200))  // the next start, as a steady client sends them
                } catch let error as ClientError {
                    refused = (id, ContinuousClock.now - began, error)
                }
            }
            let (id, waited, error) = try #require(refused, "no start was held within 20 s: \(sent.count) were sent")
            #expect((1...12).contains(sent.count), "starts went at once until the client had a second of readings: \(sent)")
            #expect(error.kind == .unavailable)
            #expect(error.retryAfter.map { $0 >= .seconds(1) } == true, "refused for load: the same start may be sent again")
            #expect(error.description.contains("behind on \(engine.names.events) partition 0") && error.description.contains("was not sent"), "\(error)")
            #expect(waited >= .seconds(3), "the start waited its BATON_START_MAX_WAIT before it was refused")
            #expect(held.startWaits.refused == 1)
            let keys = try await engine.records(engine.names.events).compactMap(\.keyString)
            #expect(!keys.contains(id), "a refused start is not sent")
            #expect(sent.allSatisfy(keys.contains))
            tasks.cancelAll()
        }

        // The coordinators caught up: the next start goes at once.
        let end = try #require(try await group.watermarks([tp])[tp]).high
        try await group.commit([TopicPartitionOffset(tp, offset: end)])
        let caughtUp = ContinuousClock.now
        try await held.start(workflowID: "late", input: [:], instanceID: "after-1", partitions: 1)
        #expect(ContinuousClock.now - caughtUp < .seconds(2))

        // Behind again, but nobody commits any more (all coordinators down): starts are not held past their
        // wait; they queue in Kafka, as in an outage.
        for i in 0..<2000 { try await filler.start(workflowID: "queued", input: [:], instanceID: "r\(i)", partitions: 1, wait: false) }
        try await filler.flush()
        try await held.start(workflowID: "late", input: [:], instanceID: "after-2", partitions: 1)
        #expect(try await engine.records(engine.names.events).filter { $0.keyString?.hasPrefix("after-") == true }.map(\.keyString) == ["after-1", "after-2"])
    }
}

/// The offset the test's stand-in coordinators have committed.
private final class Pace: Sendable {
    private let offset = Mutex<Int64>(0)
    func advance(by n: Int64) -> Int64 { offset.withLock { $0 += n; return $0 } }
    var committed: Int64 { offset.withLock { $0 } }
}

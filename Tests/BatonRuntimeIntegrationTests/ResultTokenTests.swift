import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Testing

extension OneAtATime {
    /// The worker side of result tokens (docs/wire-protocol.md): the test plays coordinator, writing commands
    /// straight to a pool's command topic, and reads what a real `StepWorker` answers on the events topic.
    @Suite("Result tokens: a StepWorker echoes its command's token", .serialized, .timeLimit(.minutes(3)))
    struct ResultTokenTests {
        static let pool = "tokens"

        /// A worker that heartbeats once, then completes, or fails when the input says so.
        static let handler: StepHandler = { ctx in
            await ctx.heartbeat(["working": true])
            if ctx.input["fail"]?.boolValue == true { throw StepFailure("declined", retryable: false) }
            return ["seen": ctx.input]
        }

        /// An engine namespace with no coordinator and one worker of `pool`, shut down on every path out.
        static func run(_ body: (Engine) async throws -> Void) async throws {
            try await withEngine(partitions: 1) { engine in
                try await TestKafka.createTopic(engine.names.commands(pool), partitions: 1)
                engine.startWorker(pool, handler: handler)
                try await body(engine)
            }
        }

        /// A command record as a coordinator writes it (the worker reads it with its hand-written reader).
        static func command(_ engine: Engine, _ instanceID: String, compensation: Bool = false, fail: Bool = false, token: String?) -> Data {
            var fields: [String: JSON] = [
                "v": 1, "kind": .string(compensation ? "compensation.command" : "step.command"), "instance_id": .string(instanceID),
                "workflow_id": "w", "workflow_version": 1, "step": "charge", "type": "service_call", "pool": .string(pool), "attempt": 2,
                "input": ["fail": .bool(fail)], "deadline": .number(Double(nowMillis() + 600_000)), "idempotency_key": .string("\(instanceID)/charge"),
                "reply_to": ["topic": .string(engine.names.events), "partition": 0],
            ]
            if !compensation { fields["heartbeat_timeout"] = 30_000 }
            if let token { fields["token"] = .string(token) }
            return JSON.object(fields).encoded()
        }

        @Test func resultsAndHeartbeatsCarryTheCommandsTokenAndACommandWithoutOneIsAnsweredWithout() async throws {
            try await Self.run { engine in
                let token = "v1.q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0VniQ"
                let other = "v1.other-attempt-token_0123456789"
                let commands = [
                    ("done", Self.command(engine, "done", token: token)),
                    ("declined", Self.command(engine, "declined", fail: true, token: other)),
                    ("undone", Self.command(engine, "undone", compensation: true, token: token)),
                    ("legacy", Self.command(engine, "legacy", token: nil)),
                ]
                let producer = try KafkaProducer(configuration: .init(client: engine.kafka), logger: TestKafka.logger)
                for (id, value) in commands {
                    try await producer.send(ProducerRecord(topic: engine.names.commands(Self.pool), key: Data(id.utf8), value: value))
                }
                await producer.close()

                var results: [String: ResultMessage] = [:]
                var heartbeats: [String: [HeartbeatMessage]] = [:]
                try await waitUntil("a result for each of the \(commands.count) commands", timeout: .seconds(60)) {
                    results = [:]
                    heartbeats = [:]
                    for m in try await engine.records(engine.names.events) {
                        guard let value = m.value else { continue }
                        switch try Wire.kind(of: value) {
                        case .stepHeartbeat:
                            let h = try Wire.decode(HeartbeatMessage.self, from: value)
                            heartbeats[h.instanceID, default: []].append(h)
                        default:
                            let r = try Wire.decode(ResultMessage.self, from: value)
                            results[r.instanceID] = r
                        }
                    }
                    return results.count == commands.count
                }
                #expect(results["done"]?.kind == .stepCompleted && results["done"]?.token == token)
                #expect(results["declined"]?.kind == .stepFailed && results["declined"]?.token == other, "each attempt's own token")
                #expect(results["undone"]?.kind == .compensationCompleted && results["undone"]?.token == token)
                #expect(results["legacy"]?.kind == .stepCompleted && results["legacy"]?.token == nil)
                // A heartbeat goes out before the handler returns, so it is in once the result is.
                #expect(heartbeats["done"]?.isEmpty == false && heartbeats["done"]?.allSatisfy { $0.token == token } == true, "\(heartbeats)")
                #expect(heartbeats["declined"]?.isEmpty == false && heartbeats["declined"]?.allSatisfy { $0.token == other } == true)
                #expect(heartbeats["legacy"]?.isEmpty == false && heartbeats["legacy"]?.allSatisfy { $0.token == nil } == true)
                // On the wire: a token-less command's answers have no "token" field at all (not null).
                for m in try await engine.records(engine.names.events) where m.keyString == "legacy" {
                    #expect(!String(decoding: m.value ?? Data(), as: UTF8.self).contains("\"token\""))
                }
            }
        }
    }
}

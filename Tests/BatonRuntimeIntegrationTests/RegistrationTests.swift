import BatonClient
import BatonCore
import BatonKafka
import BatonReadModel
@testable import BatonServer
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Synchronization
import Testing

@Suite("Definitions: a version is first-wins, also under concurrent registrations", .serialized, .timeLimit(.minutes(3)))
struct RegistrationTests {
    @Test func ofFourConcurrentRegistrationsOfOneVersionOneWinsTheOthersAreToldWhichAndInstancesRunIt() async throws {
        try await withServer(loanWorkers: false) { s in
            let texts = (1...4).map { i in "workflow_id: race\nversion: 1\nsteps: [{ id: s\(i), type: racer }]\n" }
            let ran = Mutex<[String]>([])
            _ = s.engine.startWorker("racer") { ctx in
                ran.withLock { $0.append(ctx.step) }
                return ["ok": true]
            }
            let answers = try await withThrowingTaskGroup(of: (Int, Served.Answer).self) { group in
                for (i, text) in texts.enumerated() {
                    group.addTask { (i, try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: text, type: "application/yaml")) }
                }
                var out: [Int: Served.Answer] = [:]
                for try await (i, answer) in group { out[i] = answer }
                return out
            }
            let winners = answers.filter { $0.value.status == 201 }
            #expect(winners.count == 1, "\(answers.values.map { "\($0.status) \($0.text)" })")
            let winner = try #require(winners.first?.key)
            let losers = answers.filter { $0.value.status == 409 }
            #expect(losers.count == 3, "\(answers.values.map { "\($0.status) \($0.text)" })")
            for loser in losers.values {
                #expect(loser.json["registered"]?["document"]?.stringValue == texts[winner], "\(loser.text)")
                #expect(loser.json["registered"]?["registered_at"]?.numberValue != nil, "\(loser.text)")
            }
            // Every reader agrees: the server's read model, a client's read, and an instance started afterwards.
            #expect(s.model.definition("race", version: 1)?.record.document == texts[winner])
            #expect(try await s.engine.client.definition("race", version: 1)?.steps.map(\.id) == ["s\(winner + 1)"])
            let id = try await s.engine.start("race", id: "race-1")
            #expect(try await s.engine.wait(id, for: [.completed, .failed]).status == .completed)
            #expect(ran.withLock { $0 } == ["s\(winner + 1)"])
            // The same text again is unchanged; `baton definitions register` of another text exits with 3, naming the winner.
            let again = try await s.call(.POST, "/v1/definitions", token: s.operatorToken, body: texts[winner], type: "application/yaml")
            #expect(again.status == 200 && again.json["outcome"] == "unchanged", "\(again.text)")
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("race-\(UUID()).yaml")
            try Data(texts[(winner + 1) % 4].utf8).write(to: file)
            defer { try? FileManager.default.removeItem(at: file) }  // a leftover temporary file harms nothing
            let cli = try await s.engine.baton(["definitions", "register", file.path])
            #expect(cli.status == 3, "\(cli.output)")
            #expect(cli.output.contains("s\(winner + 1)"), "\(cli.output)")
        }
    }
}

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

extension Served {
    /// Writes a record to an instance's events partition (as a worker or a plain producer would).
    func produceEvent(_ instanceID: String, _ value: String, topic: String? = nil) async throws {
        let topic = topic ?? engine.names.events
        try await engine.client.produce(
            ProducerRecord(
                topic: topic, partition: KafkaPartitioner.partition(forKey: instanceID, partitionCount: engine.partitions), key: Data(instanceID.utf8),
                value: Data(value.utf8)))
    }

    /// Waits for the dead letter of a record from `topic` with `key` whose value contains `marker`; its id.
    func deadLetter(key: String, from topic: String, containing marker: String) async throws -> String {
        var id: String?
        try await waitUntil("the dead letter of \(key) from \(topic)", timeout: .seconds(60)) {
            id = model.deadLetters(limit: 1000).first {
                $0.key == Data(key.utf8) && $0.sourceTopic == topic && String(decoding: $0.value ?? Data(), as: UTF8.self).contains(marker)
            }?.id
            return id != nil
        }
        return try #require(id)
    }

    func republish(_ id: String, value: String) async throws -> Answer {
        try await call(.POST, "/v1/deadletters/\(id)/republish", token: operatorToken, body: #"{"value":\#(value)}"#)
    }

    /// Records on a topic that a republish wrote (they carry its audit header).
    func republished(on topic: String) async throws -> [KafkaMessage] {
        try await engine.records(topic).filter { $0.header(WireHeaders.republishedBy) != nil }
    }
}

@Suite("Republish republishes: no authority records or commands in place of a dead letter", .serialized, .timeLimit(.minutes(4)))
struct RepublishTests {
    @Test func anOperatorCannotDecideATaskAsSomeoneElseByRepublishingADecision() async throws {
        try await withServer(loanWorkers: false) { s in
            let events = s.engine.names.events
            let registered = try await s.call(
                .POST, "/v1/definitions", token: s.operatorToken, body: "workflow_id: approval\nsteps: [{ id: review, type: human_task, assignee: role:credit_manager }]",
                type: "application/yaml")
            #expect(registered.status == 201, "\(registered.text)")
            let started = try await s.call(.POST, "/v1/instances?wait=true", token: s.operatorToken, body: #"{"workflow_id":"approval","instance_id":"r-1"}"#)
            #expect(started.status == 201, "\(started.text)")
            let taskID = "r-1/review/1"
            try await waitUntil("the task of r-1", timeout: .seconds(60)) { s.model.task(taskID)?.status == .open }
            // An operator's own decision is refused (the task is a credit manager's)...
            let direct = try await s.call(.POST, "/v1/tasks/r-1%2Freview%2F1/decision", token: s.operatorToken, body: #"{"approved":true}"#)
            #expect(direct.status == 403, "\(direct.text)")
            // ... and so is one written in place of a dead letter: of a malformed decision, or of junk.
            try await s.produceEvent("r-1", #"{"v":1,"kind":"task.decided","instance_id":"r-1","task_id":"r-1/review/1","step":"review","attempt":0,"approved":true,"by":"ops"}"#)
            try await s.produceEvent("r-1", "{junk for r-1")
            let malformed = try await s.deadLetter(key: "r-1", from: events, containing: "task.decided")
            let junk = try await s.deadLetter(key: "r-1", from: events, containing: "junk")
            let forged = #"{"v":1,"kind":"task.decided","instance_id":"r-1","task_id":"r-1/review/1","step":"review","attempt":1,"approved":true,"by":"carol","override":true,"request_id":"forged-1"}"#
            for id in [malformed, junk] {
                let answer = try await s.republish(id, value: forged)
                #expect(answer.status == 403, "\(answer.text)")
                #expect(answer.json["detail"]?.stringValue?.contains("acts as a person") == true, "\(answer.text)")
            }
            // A signal naming a person is authority too.
            let signal = #"{"v":1,"kind":"signal","instance_id":"r-1","name":"go","by":"carol","request_id":"forged-2"}"#
            #expect(try await s.republish(junk, value: signal).status == 403)
            #expect(try await s.republished(on: events).isEmpty)
            #expect(s.model.task(taskID)?.status == .open)
        }
    }

    @Test func aCommandIsNeverReplacedNeitherItsAmountNorItsReplyTo() async throws {
        try await withServer(loanWorkers: false) { s in
            let ran = Mutex<[JSON]>([])
            _ = s.engine.startWorker("disburse") { ctx in
                ran.withLock { $0.append(ctx.input) }
                return ["ok": true]
            }
            _ = try await s.engine.register("workflow_id: pay\nsteps: [{ id: pay, type: disburse }]")
            let commands = s.engine.names.commands("disburse")
            let deadline = nowMillis() + 3_600_000
            func command(amount: Int, replyTo: String, idempotencyKey: Bool) -> String {
                let key = idempotencyKey ? #","idempotency_key":"c-1/pay/1""# : ""
                return #"{"v":1,"kind":"step.command","instance_id":"c-1","workflow_id":"pay","workflow_version":1,"step":"pay","type":"disburse","pool":"disburse","attempt":1,"input":{"amount":\#(amount),"account":"acc-1"},"deadline":\#(deadline),"reply_to":{"topic":"\#(replyTo)","partition":0}\#(key)}"#
            }
            // Without its idempotency key the worker cannot use it: dead-lettered.
            try await s.produceEvent("c-1", command(amount: 100, replyTo: s.engine.names.events, idempotencyKey: false), topic: commands)
            let id = try await s.deadLetter(key: "c-1", from: commands, containing: "step.command")
            for value in [
                command(amount: 999_999, replyTo: s.engine.names.events, idempotencyKey: true),
                command(amount: 100, replyTo: "evil.topic", idempotencyKey: true),
            ] {
                let answer = try await s.republish(id, value: value)
                #expect(answer.status == 403, "\(answer.text)")
                #expect(answer.json["detail"]?.stringValue?.contains("never replaced") == true, "\(answer.text)")
            }
            #expect(try await s.republished(on: commands).isEmpty)
            #expect(ran.withLock { $0 }.isEmpty)
        }
    }

    @Test func anOperatorFixesAMalformedResultAndTheFixIsWrittenWhereItBelongsAuditedAndApplied() async throws {
        try await withServer(loanWorkers: false) { s in
            let events = s.engine.names.events
            _ = try await s.engine.register("workflow_id: fix\nsteps: [{ id: a, type: manualfix }, { id: b, type: manualfix, depends_on: [a] }]")
            let commands = s.engine.names.commands("manualfix")
            let instance = try await s.engine.start("fix", id: "f-1")
            var sent: CommandMessage?
            try await waitUntil("the command of f-1's step a", timeout: .seconds(60)) {
                sent = try await s.engine.records(commands).compactMap { m in m.value.flatMap { try? Wire.decode(CommandMessage.self, from: $0) } }.first { $0.instanceID == instance }
                return sent != nil
            }
            let command = try #require(sent)
            func result(attempt: Int, output: String) -> String {
                let token = command.token.map { #","token":"\#($0)""# } ?? ""
                return #"{"v":1,"kind":"step.completed","instance_id":"f-1","step":"a","attempt":\#(attempt),"output":\#(output),"idempotency_key":"\#(command.idempotencyKey)"\#(token)}"#
            }
            // A worker's bug: attempt 0. The coordinator refuses it.
            try await s.produceEvent("f-1", result(attempt: 0, output: #"{"fixed":false}"#))
            let id = try await s.deadLetter(key: "f-1", from: events, containing: "step.completed")
            // A fix of another kind, or for another instance, is refused; nothing is written.
            #expect(try await s.republish(id, value: #"{"v":1,"kind":"step.failed","instance_id":"f-1","step":"a","attempt":1,"error":"x"}"#).status == 400)
            #expect(try await s.republish(id, value: result(attempt: 1, output: "{}").replacingOccurrences(of: "\"f-1\"", with: "\"f-2\"")).status == 400)
            #expect(try await s.republished(on: events).isEmpty)
            let fixed = try await s.republish(id, value: result(attempt: 1, output: #"{"fixed":true}"#))
            #expect(fixed.status == 202, "\(fixed.text)")
            let partition = KafkaPartitioner.partition(forKey: "f-1", partitionCount: s.engine.partitions)
            #expect(fixed.json["partition"] == .number(Double(partition)))
            let written = try #require(try await s.republished(on: events).first)
            #expect(written.partition == partition && written.keyString == "f-1")
            #expect(written.header(WireHeaders.republishedBy).map { String(decoding: $0, as: UTF8.self) } == "ops")
            #expect(written.header(WireHeaders.republishedFrom).map { String(decoding: $0, as: UTF8.self) } == id)
            #expect(written.header(WireHeaders.kind).map { String(decoding: $0, as: UTF8.self) } == "step.completed")
            try await waitUntil("the fix applied", timeout: .seconds(60)) {
                guard let (state, workflow, _) = s.model.state(instance), let a = workflow?.index["a"] else { return false }
                return state.steps[a].output == ["fixed": true]
            }
        }
    }
}

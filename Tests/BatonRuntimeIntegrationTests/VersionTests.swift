import BatonClient
import BatonCore
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Testing

@Suite("Runtime: definition versions", .serialized, .timeLimit(.minutes(2)))
struct VersionTests {
    @Test func aRunningInstanceKeepsTheVersionItStartedWith() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("""
                workflow_id: doc
                version: 1
                steps:
                  - { id: draft, type: svc }
                  - { id: review, type: human_task, depends_on: [draft], assignee: role:editor }
                  - { id: publish, type: svc, depends_on: [review] }
                """)
            engine.startCoordinator()
            let ran = Recorder<String>()
            engine.startWorker("svc") { ctx in
                ran.add("\(ctx.instanceID)/\(ctx.step)/v\(ctx.command.workflowVersion)")
                return [:]
            }
            let old = try await engine.start("doc", id: "old")
            try await engine.wait(old, for: [.waiting])
            // Version 2 renames a step; the instance that started on version 1 goes on with version 1.
            _ = try await engine.register("""
                workflow_id: doc
                version: 2
                steps:
                  - { id: draft, type: svc }
                  - { id: review, type: human_task, depends_on: [draft], assignee: role:editor }
                  - { id: release, type: svc, depends_on: [review] }
                """)
            // A registered version is immutable: the same version with other content is refused.
            await #expect(throws: DefinitionConflict.self) {
                try await engine.client.register(document: Data("workflow_id: doc\nversion: 2\nsteps: [{ id: x, type: svc }]".utf8))
            }
            let new = try await engine.start("doc", id: "new")
            try await engine.wait(new, for: [.waiting])
            for task in try await engine.client.tasks() where task.status == .open {
                try await engine.client.decide(taskID: task.taskID, approve: true, as: .person("ed", "editor"), comment: nil)
            }
            #expect(try await engine.wait(old, for: [.completed, .failed]).version == 1)
            #expect(try await engine.wait(new, for: [.completed, .failed]).version == 2)
            #expect(ran.all.contains("old/publish/v1"))
            #expect(ran.all.contains("new/release/v2"))
        }
    }

    /// `baton start` refuses a workflow or a version that is not registered, instead of sending a start that
    /// could only be dead-lettered; a registered one starts and prints the instance id.
    @Test func theCommandLineStartsOnlyRegisteredWorkflows() async throws {
        try await withEngine(partitions: 1) { engine in
            _ = try await engine.register("workflow_id: doc\nversion: 1\nsteps: [{ id: draft, type: svc }]")
            engine.startCoordinator()
            let unknown = try await engine.baton(["start", "nope"])
            #expect(unknown.status == 4, "not found: \(unknown.output)")
            #expect(unknown.output.contains("no workflow 'nope' is registered on \(engine.names.definitions)"), "\(unknown.output)")
            let noVersion = try await engine.baton(["start", "doc", "--version", "7"])
            #expect(noVersion.status == 4, "not found: \(noVersion.output)")
            #expect(noVersion.output.contains("version 7 of 'doc' is not registered"), "\(noVersion.output)")
            let started = try await engine.baton(["start", "doc", "--id", "doc-1", "--input", #"{"title": "hello"}"#])
            #expect(started.status == 0, "\(started.output)")
            #expect(started.output.trimmingCharacters(in: .whitespacesAndNewlines) == "doc-1")
        }
    }
}

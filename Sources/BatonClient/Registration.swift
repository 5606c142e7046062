import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation

/// What became of a registration (`BatonClient.registration`).
public struct Registration: Sendable {
    public enum Outcome: String, Sendable { case registered, unchanged }
    public var workflow: Workflow
    /// `registered`: this text won the version; `unchanged`: the same text was registered already (first).
    public var outcome: Outcome
    /// The registration that counts for the version (this one, or the identical one before it).
    public var record: DefinitionRecord
}

/// A workflow version is registered already with another text: registrations are first-wins and immutable.
public struct DefinitionConflict: Error, CustomStringConvertible, Sendable {
    /// What is registered: the winner's document and when it was registered.
    public var registered: DefinitionRecord
    public var description: String {
        "\(registered.workflowID) version \(registered.version) is registered already (at \(registered.registeredAt)) with another content; "
            + "give the changed definition a new version"
    }
}

extension BatonClient {
    /// Checks a definition and registers it, first-wins: it is written under a key of its own to the partition
    /// of its version, then that partition is read until the record is seen, and `DefinitionLog` (the rule every
    /// reader applies) says whether it won. Throws `DefinitionConflict` (with what is registered) when another
    /// text of the version came first, `DefinitionErrors` for a definition that does not load.
    public func registration(document: Data, source: String? = nil, timeout: Duration = .seconds(30)) async throws -> Registration {
        let workflow = try DefinitionLoader.load(document, source: source, namespace: names.namespace)
        let text = String(decoding: document, as: UTF8.self)
        let number = DefinitionLog.partition(workflowID: workflow.id, version: workflow.version, partitionCount: try await partitionCount(names.definitions))
        let partition = TopicPartition(names.definitions, number)
        var log = DefinitionLog()
        // A failed read of a record is skipped here as every reader skips it (the rule is over readable records).
        func read(_ m: KafkaMessage) { _ = try? log.apply(key: m.keyString, value: m.value) }
        let ends = try await readToEnd([partition], timeout: timeout) { read($0) }
        if let winner = log.winner(workflow.id, workflow.version) {
            guard winner.record.document == text else { throw DefinitionConflict(registered: winner.record) }
            return Registration(workflow: workflow, outcome: .unchanged, record: winner.record)
        }
        let pools = Set(workflow.steps.flatMap { step in [step.hasWorker ? step.pool : nil, step.compensation?.pool].compactMap { $0 } })
        try await CommandTopics(admin: admin, logger: logger).ensure(Set(pools.map { names.commands($0) }))
        let key = DefinitionLog.registrationKey(workflowID: workflow.id, version: workflow.version, requestID: UUID().uuidString.lowercased())
        let record = DefinitionRecord(workflowID: workflow.id, version: workflow.version, document: text, registeredAt: Self.now())
        let report = try await producer.send(
            ProducerRecord(topic: names.definitions, partition: number, key: Data(key.utf8), value: Wire.encode(record), headers: headers(.definition)))
        var seen = false
        try await follow(from: TopicPartitionOffset(partition, offset: ends[partition] ?? TopicPartitionOffset.beginning), timeout: timeout) { m in
            read(m)
            seen = m.offset >= report.offset
            return seen
        }
        guard seen else {
            throw ClientError(.notAppliedInTime, "registered \(workflow.id) v\(workflow.version) at \(partition)@\(report.offset), but did not read it back within \(timeout)")
        }
        guard let winner = log.winner(workflow.id, workflow.version) else {
            throw ClientError(.unavailable, "registered \(workflow.id) v\(workflow.version), but its registration was removed (a tombstone) before it was read back")
        }
        if winner.key == key { return Registration(workflow: workflow, outcome: .registered, record: record) }
        guard winner.record.document == text else { throw DefinitionConflict(registered: winner.record) }
        return Registration(workflow: workflow, outcome: .unchanged, record: winner.record)
    }
}

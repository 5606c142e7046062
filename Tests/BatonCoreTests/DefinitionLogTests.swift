import BatonWire
import Foundation
import Testing

/// The rule every reader of the definitions topic decides registrations with (`DefinitionLog`).
@Suite("Definition log: first registration of a version wins, before and after compaction")
struct DefinitionLogTests {
    typealias Record = (key: String, value: Data?)

    static func registration(_ id: String, _ version: Int, _ text: String, request: String?, at: Int64) -> Record {
        let key = request.map { DefinitionLog.registrationKey(workflowID: id, version: version, requestID: $0) } ?? DefinitionRecord.key(id, version)
        return (key, Wire.encode(DefinitionRecord(workflowID: id, version: version, document: text, registeredAt: at)))
    }

    static func fold(_ log: [Record]) throws -> DefinitionLog {
        var fold = DefinitionLog()
        for r in log { try fold.apply(key: r.key, value: r.value) }
        return fold
    }

    /// Keep-last-per-key compaction, as Kafka does it on a `cleanup.policy: compact` topic: for each key only
    /// its last record stays, in its place; a tombstone removes its key (once the delete retention passed).
    static func compacted(_ log: [Record]) -> [Record] {
        var last: [String: Int] = [:]
        for (i, r) in log.enumerated() { last[r.key] = i }
        return log.enumerated().filter { last[$0.element.key] == $0.offset && $0.element.value != nil }.map(\.element)
    }

    /// A recorded log: four concurrent registrations of loan@2, a later identical one, a registration of the
    /// release before (legacy key) for loan@1 written twice (the old last-wins), and a tombstone of a loser.
    static let recorded: [Record] = [
        registration("loan", 1, "A1", request: nil, at: 1),
        registration("loan", 2, "first", request: "r1", at: 10),
        registration("loan", 2, "second", request: "r2", at: 11),
        registration("loan", 1, "B1", request: nil, at: 12),
        registration("loan", 2, "third", request: "r3", at: 12),
        registration("loan", 2, "first", request: "r5", at: 14),
        registration("loan", 2, "fourth", request: "r4", at: 13),
        (DefinitionLog.registrationKey(workflowID: "loan", version: 2, requestID: "r3"), nil),
        registration("loan", 3, "x", request: "r6", at: 20),
        registration("other", 3, "y", request: "r7", at: 21),
    ]

    @Test func theFirstRegistrationOfAVersionWinsAndCompactionPicksTheSameWinner() throws {
        let before = try Self.fold(Self.recorded)
        let after = try Self.fold(Self.compacted(Self.recorded))
        #expect(Self.compacted(Self.recorded).count < Self.recorded.count)
        #expect(before.winner("loan", 2)?.record.document == "first")
        #expect(before.winner("loan", 2)?.key == "loan@2#r1")
        // The legacy key written twice counts where compaction leaves it: its last record.
        #expect(before.winner("loan", 1)?.record.document == "B1")
        #expect(before.latest("loan")?.record.version == 3)
        #expect(before.winners == after.winners)
        // Every prefix of the log (a reader part-way through) agrees with its own compaction too.
        for n in 0...Self.recorded.count {
            let prefix = Array(Self.recorded.prefix(n))
            #expect(try Self.fold(prefix).winners == Self.fold(Self.compacted(prefix)).winners, "after \(n) records")
        }
    }

    @Test func aLaterDifferentRegistrationChangesNothingAndATombstoneOfTheWinnerHandsOnInOrder() throws {
        var log = DefinitionLog()
        let first = Self.registration("w", 1, "one", request: "a", at: 1)
        let second = Self.registration("w", 1, "two", request: "b", at: 2)
        #expect(try log.apply(key: first.key, value: first.value)?.winner?.record.document == "one")
        #expect(try log.apply(key: second.key, value: second.value) == nil)
        #expect(try log.apply(key: first.key, value: nil)?.winner?.record.document == "two")
        let removed = try log.apply(key: second.key, value: nil)
        #expect(removed?.version == "w@1" && removed?.winner == nil)
    }

    @Test func aRecordWhoseKeyNamesAnotherVersionIsRefusedWithTheReason() throws {
        var log = DefinitionLog()
        let record = Self.registration("w", 2, "text", request: "a", at: 1)
        #expect {
            try log.apply(key: "w@1#a", value: record.value)
        } throws: { error in
            (error as? Wire.DecodeError)?.reason.contains("registers w@2 under the key 'w@1#a'") == true
        }
        #expect(throws: Wire.DecodeError.self) { try log.apply(key: nil, value: record.value) }
        #expect(log.winners.isEmpty)
        // A workflow id with `#` in it, with keys of both releases.
        #expect(DefinitionLog.version(ofKey: "a#b@1") == "a#b@1")
        #expect(DefinitionLog.version(ofKey: "a#b@1#req") == "a#b@1")
    }

    @Test func everyRegistrationOfAVersionGoesToThePartitionItsVersionHashesTo() {
        for n in [1, 3, 12] {
            #expect(DefinitionLog.partition(workflowID: "loan", version: 2, partitionCount: n) == KafkaPartitioner.partition(forKey: "loan@2", partitionCount: n))
        }
    }
}

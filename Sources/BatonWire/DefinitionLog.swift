import Foundation

/// The one rule that decides which registration of a workflow version counts, applied by every reader of the
/// definitions topic (the coordinators' `DefinitionRegistry`, the server's read model, `BatonClient.definition`
/// and the registering side's check): **the first record for `(workflow_id, version)` in partition offset order
/// wins**; later records with another document are ignored, identical ones are harmless.
///
/// Why it holds under concurrency and compaction: every registration of `<id>@<version>` is written to the
/// partition that `<id>@<version>` hashes to (murmur2, `partition(workflowID:version:partitionCount:)`), so
/// one partition orders them all; and each is written under a key of its own, `<id>@<version>#<request id>`
/// (`registrationKey`), so that no loser shares the winner's key and keep-last-per-key compaction (the topic
/// is compacted) can never bring a loser back in the winner's place. Records of the release before (key
/// `<id>@<version>`, on the same partition) are read as registrations too.
///
/// To give the same answer before and after compaction even for a key written twice (only the release before
/// did that), a record takes the place of any earlier one with the same key: it counts at its own, later
/// position, as compaction would leave it; a tombstone (no value) removes its key's record. The document of a
/// record is not checked here (every Baton writer checks it before writing), so that all readers decide alike.
public struct DefinitionLog: Sendable {
    /// A registration as read: its record key and record.
    public struct Entry: Sendable, Hashable {
        public var key: String
        public var record: DefinitionRecord
    }

    /// A version's winner changed (`winner` nil: no registration of it is left).
    public struct Change: Sendable, Hashable {
        /// `<workflow_id>@<version>`.
        public var version: String
        public var winner: Entry?
    }

    /// Per version (`<workflow_id>@<version>`), its registrations in the order they count (one per key).
    /// Losers are kept (they are few and small) so that a tombstone of the winner leaves the right one.
    var versions: [String: [Entry]] = [:]

    public init() {}

    /// The key a new registration is written under.
    public static func registrationKey(workflowID: String, version: Int, requestID: String) -> String {
        "\(DefinitionRecord.key(workflowID, version))#\(requestID)"
    }

    /// The partition every registration of the version goes to (the one its `<id>@<version>` hashes to).
    public static func partition(workflowID: String, version: Int, partitionCount: Int) -> Int32 {
        KafkaPartitioner.partition(forKey: DefinitionRecord.key(workflowID, version), partitionCount: partitionCount)
    }

    /// The version (`<id>@<version>`) a record key registers: the key up to its request id (after the last
    /// `#`, which has no `@`), or the whole key (the release before).
    public static func version(ofKey key: String) -> String {
        guard let hash = key.lastIndex(of: "#"), !key[key.index(after: hash)...].contains("@") else { return key }
        return String(key[..<hash])
    }

    /// Reads the next record of a definitions partition (in offset order). Returns the change of winner it
    /// makes, if any; throws, changing nothing, for a record that is not a registration of what its key names.
    @discardableResult
    public mutating func apply(key: String?, value: Data?) throws(Wire.DecodeError) -> Change? {
        guard let key else { throw Wire.DecodeError("a definition record without a key") }
        let version = Self.version(ofKey: key)
        guard let value else {
            return update(version) { $0.removeAll { $0.key == key } }
        }
        guard try Wire.kind(of: value) == .definition else { throw Wire.DecodeError("not a definition record") }
        let record = try Wire.decode(DefinitionRecord.self, from: value)
        let named = DefinitionRecord.key(record.workflowID, record.version)
        guard named == version else {
            throw Wire.DecodeError("the record registers \(named) under the key '\(key)', which names \(version)")
        }
        return update(version) { entries in
            entries.removeAll { $0.key == key }
            entries.append(Entry(key: key, record: record))
        }
    }

    mutating func update(_ version: String, _ change: (inout [Entry]) -> Void) -> Change? {
        var entries = versions[version] ?? []
        let before = entries.first
        change(&entries)
        versions[version] = entries.isEmpty ? nil : entries
        let after = entries.first
        return before == after ? nil : Change(version: version, winner: after)
    }

    /// The registration that counts for a version, if any.
    public func winner(_ workflowID: String, _ version: Int) -> Entry? {
        versions[DefinitionRecord.key(workflowID, version)]?.first
    }

    /// The registration that counts for the latest version of a workflow.
    public func latest(_ workflowID: String) -> Entry? {
        versions.values.compactMap(\.first).filter { $0.record.workflowID == workflowID }.max { $0.record.version < $1.record.version }
    }

    /// Every version's winner, by `<id>@<version>`.
    public var winners: [String: Entry] { versions.compactMapValues(\.first) }
}

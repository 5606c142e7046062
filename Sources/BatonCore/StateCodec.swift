import Foundation

/// The encoding of one instance's state, as stored on the compacted state topic: two header bytes
/// (`0xBA`, the format version) and JSON with short keys in which default values are left out. Snapshots on
/// the state topic leave step outputs out (`encodeSnapshot`): those are kept on the outputs topic and put
/// back when a coordinator rebuilds (`InstanceState.restore(outputs:)`).
public enum StateCodec {
    public static let magic: UInt8 = 0xBA
    public static let version: UInt8 = 1

    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public var reason: String
        public var description: String { "cannot decode instance state: \(reason)" }
    }

    /// The snapshot for the state topic: everything but the step outputs.
    public static func encodeSnapshot(_ state: InstanceState) -> Data { encode(state, outputs: false) }

    public static func encode(_ state: InstanceState) -> Data { encode(state, outputs: true) }

    static func encode(_ state: InstanceState, outputs: Bool) -> Data {
        var writer = JSONTextWriter(capacity: 1024)
        writer.raw([magic, version])
        state.write(to: &writer, outputs: outputs)
        return writer.data
    }

    /// Only the instance's status, read without decoding the whole snapshot (for watchers of many
    /// instances): a scan of the top-level object's keys that skips over every nested value.
    public static func status(_ data: Data) -> InstanceStatus? {
        topLevelStrings(data, ["status"])["status"].flatMap(InstanceStatus.init(rawValue:))
    }

    /// The instance's workflow and status, read as cheaply as `status` (for `baton watch`, which counts finished
    /// instances by workflow).
    public static func workflowAndStatus(_ data: Data) -> (workflowID: String, status: InstanceStatus)? {
        let found = topLevelStrings(data, ["workflowID", "status"])
        guard let workflowID = found["workflowID"], let status = found["status"].flatMap(InstanceStatus.init(rawValue:)) else { return nil }
        return (workflowID, status)
    }

    /// The string values of `keys` in the snapshot's top-level object (a key whose value is not a string is left
    /// out): one pass over the bytes that skips every nested value, and stops once every key was found.
    static func topLevelStrings(_ data: Data, _ keys: Set<String>) -> [String: String] {
        guard data.count >= 2, data[data.startIndex] == magic, data[data.startIndex + 1] == version else { return [:] }
        let bytes = [UInt8](data.dropFirst(2))
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        var found: [String: String] = [:]
        var depth = 0
        var i = 0
        var expectKey = false
        /// The end (exclusive) of the string starting at `start` (its opening quote).
        func stringEnd(_ start: Int) -> Int? {
            var j = start + 1
            while j < bytes.count {
                if bytes[j] == backslash { j += 2; continue }
                if bytes[j] == quote { return j + 1 }
                j += 1
            }
            return nil
        }
        /// The text of the string literal from `start` to `end` (quotes included), its escapes resolved.
        func text(_ start: Int, _ end: Int) -> String? {
            let inner = bytes[(start + 1)..<(end - 1)]
            guard inner.contains(backslash) else { return String(decoding: inner, as: UTF8.self) }
            // Rare (an id with an escaped character): let the JSON decoder resolve the escapes; nil if it cannot.
            return try? JSONDecoder().decode(String.self, from: Data(bytes[start..<end]))
        }
        while i < bytes.count {
            let b = bytes[i]
            if b == quote {
                guard let end = stringEnd(i) else { return found }
                if depth == 1 && expectKey {
                    if let key = text(i, end), keys.contains(key) {
                        var v = end
                        while v < bytes.count, bytes[v] == UInt8(ascii: ":") || bytes[v] == UInt8(ascii: " ") { v += 1 }
                        if v < bytes.count, bytes[v] == quote, let valueEnd = stringEnd(v) {
                            if let value = text(v, valueEnd) { found[key] = value }
                            if found.count == keys.count { return found }
                            i = valueEnd
                            expectKey = false
                            continue
                        }
                    }
                    expectKey = false
                }
                i = end
                continue
            }
            switch b {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                depth += 1
                expectKey = b == UInt8(ascii: "{") && depth == 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            case UInt8(ascii: ","): expectKey = depth == 1
            default: break
            }
            i += 1
        }
        return found
    }

    public static func decode(_ data: Data) throws(DecodeError) -> InstanceState {
        guard data.count >= 2, data[data.startIndex] == magic else { throw DecodeError(reason: "not a Baton state record (bad header)") }
        let v = data[data.startIndex + 1]
        guard v == version else { throw DecodeError(reason: "format version \(v) is not supported (this build reads \(version))") }
        let json = data.dropFirst(2)
        // The hand-written reader takes what the engine writes; anything else (an older field name, an
        // integer written as 1.0) goes to JSONDecoder, which reads it or says what is wrong.
        if let state = try? JSONTextReader.read(json, { try InstanceState(reading: &$0) }) { return state }
        do {
            return try JSONDecoder().decode(InstanceState.self, from: json)
        } catch {
            throw DecodeError(reason: "\(error)")
        }
    }
}

extension UnitState {
    enum CodingKeys: String, CodingKey {
        case status = "s", attempt = "a", output = "o", error = "e", completedSeq = "q"
        case compensation = "c", compensationAttempt = "ca", compensationError = "ce", compensatedSeq = "cq"
        case progress = "p", heartbeatAt = "h", task = "t"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        status = try c.decodeIfPresent(UnitStatus.self, forKey: .status) ?? .pending
        attempt = try c.decodeIfPresent(Int.self, forKey: .attempt) ?? 0
        output = try c.decodeIfPresent(JSON.self, forKey: .output)
        error = try c.decodeIfPresent(String.self, forKey: .error)
        completedSeq = try c.decodeIfPresent(Int.self, forKey: .completedSeq)
        compensation = try c.decodeIfPresent(CompensationStatus.self, forKey: .compensation)
        compensationAttempt = try c.decodeIfPresent(Int.self, forKey: .compensationAttempt) ?? 0
        compensationError = try c.decodeIfPresent(String.self, forKey: .compensationError)
        compensatedSeq = try c.decodeIfPresent(Int.self, forKey: .compensatedSeq)
        progress = try c.decodeIfPresent(JSON.self, forKey: .progress)
        heartbeatAt = try c.decodeIfPresent(Timestamp.self, forKey: .heartbeatAt)
        task = try c.decodeIfPresent(HumanTask.self, forKey: .task)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        if status != .pending { try c.encode(status, forKey: .status) }
        if attempt != 0 { try c.encode(attempt, forKey: .attempt) }
        try c.encodeIfPresent(output, forKey: .output)
        try c.encodeIfPresent(error, forKey: .error)
        try c.encodeIfPresent(completedSeq, forKey: .completedSeq)
        try c.encodeIfPresent(compensation, forKey: .compensation)
        if compensationAttempt != 0 { try c.encode(compensationAttempt, forKey: .compensationAttempt) }
        try c.encodeIfPresent(compensationError, forKey: .compensationError)
        try c.encodeIfPresent(compensatedSeq, forKey: .compensatedSeq)
        try c.encodeIfPresent(progress, forKey: .progress)
        try c.encodeIfPresent(heartbeatAt, forKey: .heartbeatAt)
        try c.encodeIfPresent(task, forKey: .task)
    }
}

extension StepState {
    enum CodingKeys: String, CodingKey {
        case status = "s", units = "u", items = "i", output = "o", error = "e", completedSeq = "q"
        case startedAt = "t0", finishedAt = "t1", attemptBase = "ab", compensationAttemptBase = "cb", escalated = "x"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        status = try c.decodeIfPresent(StepStatus.self, forKey: .status) ?? .pending
        units = try c.decodeIfPresent([UnitState].self, forKey: .units) ?? []
        items = try c.decodeIfPresent([JSON].self, forKey: .items)
        completedSeq = try c.decodeIfPresent(Int.self, forKey: .completedSeq)
        error = try c.decodeIfPresent(String.self, forKey: .error)
        startedAt = try c.decodeIfPresent(Timestamp.self, forKey: .startedAt)
        finishedAt = try c.decodeIfPresent(Timestamp.self, forKey: .finishedAt)
        attemptBase = try c.decodeIfPresent(Int.self, forKey: .attemptBase) ?? 0
        compensationAttemptBase = try c.decodeIfPresent(Int.self, forKey: .compensationAttemptBase) ?? 0
        escalated = try c.decodeIfPresent(Bool.self, forKey: .escalated) ?? false
        // A plain step's output is its single unit's; it is stored once.
        output = try c.decodeIfPresent(JSON.self, forKey: .output) ?? (items == nil && status == .completed ? units.first?.output : nil)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        if status != .pending { try c.encode(status, forKey: .status) }
        if !units.isEmpty { try c.encode(units, forKey: .units) }
        try c.encodeIfPresent(items, forKey: .items)
        let derivable = items == nil && status == .completed && units.count == 1 && units[0].output == output
        if !derivable { try c.encodeIfPresent(output, forKey: .output) }
        try c.encodeIfPresent(error, forKey: .error)
        try c.encodeIfPresent(completedSeq, forKey: .completedSeq)
        try c.encodeIfPresent(startedAt, forKey: .startedAt)
        try c.encodeIfPresent(finishedAt, forKey: .finishedAt)
        if attemptBase != 0 { try c.encode(attemptBase, forKey: .attemptBase) }
        if compensationAttemptBase != 0 { try c.encode(compensationAttemptBase, forKey: .compensationAttemptBase) }
        if escalated { try c.encode(escalated, forKey: .escalated) }
    }
}

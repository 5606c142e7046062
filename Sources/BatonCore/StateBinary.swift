import Foundation

/// A compact binary form of an instance's state, for a coordinator to hold the instances that only wait (for a
/// person, an operator, or their retention to end) in about a third of their JSON size: no keys, numbers as
/// variable-length integers, absent fields as bits. It stays in memory and is never written to a topic: the
/// state topic keeps the JSON of `StateCodec`. A round trip gives back an equal state (property-tested).
public enum StateBinary {
    /// The first byte, so that a buffer can be told from the JSON form if one is ever mistaken for the other.
    public static let version: UInt8 = 0xB2

    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public var reason: String
        public var description: String { "cannot decode a binary instance state: \(reason)" }
    }

    public static func encode(_ state: InstanceState) -> Data {
        var w = BinaryWriter()
        w.byte(version)
        w.state(state)
        return Data(w.bytes)
    }

    /// The instance's workflow and status, read from the front of the buffer without decoding the rest.
    public static func workflowAndStatus(_ data: Data) -> (workflowID: String, status: InstanceStatus)? {
        try? data.withUnsafeBytes { raw in  // nil for a buffer that is not the binary form, as the doc says
            var r = BinaryReader(raw)
            guard try r.byte() == version else { return nil }
            _ = try r.flags()
            _ = try r.string()
            let workflowID = try r.string()
            _ = try r.int()
            return (workflowID, try r.enumCase(InstanceStatus.self))
        }
    }

    public static func decode(_ data: Data) throws -> InstanceState {
        try data.withUnsafeBytes { raw in
            var r = BinaryReader(raw)
            guard try r.byte() == version else { throw DecodeError(reason: "not the binary form (first byte)") }
            let state = try r.state()
            guard r.atEnd else { throw DecodeError(reason: "bytes after the state") }
            return state
        }
    }
}

struct BinaryWriter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(384) }

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    mutating func uint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// Zigzag, so that small negative numbers stay short.
    mutating func int(_ v: Int64) { uint(UInt64(bitPattern: (v << 1) ^ (v >> 63))) }
    mutating func int(_ v: Int) { int(Int64(v)) }

    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            uint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    mutating func flags(_ bits: [Bool]) {
        var v: UInt64 = 0
        for (i, b) in bits.enumerated() where b { v |= 1 << UInt64(i) }
        uint(v)
    }

    mutating func json(_ value: JSON) {
        switch value {
        case .null: byte(0)
        case .bool(let b): byte(b ? 2 : 1)
        case .number(let n):
            if n.rounded() == n, abs(n) < 9e15, !(n == 0 && n.sign == .minus) {
                byte(3)
                int(Int64(n))
            } else {
                byte(4)
                uint(n.bitPattern)
            }
        case .string(let s):
            byte(5)
            string(s)
        case .array(let items):
            byte(6)
            uint(UInt64(items.count))
            for item in items { json(item) }
        case .object(let fields):
            byte(7)
            uint(UInt64(fields.count))
            for (k, v) in fields {
                string(k)
                json(v)
            }
        }
    }

    mutating func enumCase<E: CaseIterable & Equatable>(_ value: E) {
        byte(UInt8(E.allCases.firstIndex(of: value).map { E.allCases.distance(from: E.allCases.startIndex, to: $0) } ?? 0))
    }

    mutating func state(_ s: InstanceState) {
        flags([
            s.finishedAt != nil, s.deadline != nil, s.reason != nil, s.failedStep != nil, s.suspension != nil, s.output != nil, s.startRequest != nil,
            s.trace != nil, s.cancelRequested, !s.timers.isEmpty, !s.requests.isEmpty, s.completionCounter != 0, s.generation != 0,
            s.signals != nil,
        ])
        string(s.instanceID)
        string(s.workflowID)
        int(s.version)
        enumCase(s.status)
        json(s.input)
        int(s.startedAt)
        if let v = s.finishedAt { int(v) }
        if let v = s.deadline { int(v) }
        if let v = s.reason { string(v) }
        if let v = s.failedStep { string(v) }
        if let v = s.suspension { enumCase(v) }
        if let v = s.output { json(v) }
        if let v = s.startRequest { string(v) }
        if let trace = s.trace {
            uint(UInt64(trace.count))
            for (k, v) in trace {
                string(k)
                string(v)
            }
        }
        if !s.timers.isEmpty {
            uint(UInt64(s.timers.count))
            for t in s.timers {
                timerKey(t.key)
                int(t.dueAt)
            }
        }
        if !s.requests.isEmpty {
            uint(UInt64(s.requests.count))
            for r in s.requests { string(r) }
        }
        if s.completionCounter != 0 { int(s.completionCounter) }
        if s.generation != 0 { int(s.generation) }
        if let signals = s.signals { json(.object(signals)) }
        uint(UInt64(s.steps.count))
        for step in s.steps { self.step(step, instanceID: s.instanceID, workflowID: s.workflowID) }
    }

    mutating func timerKey(_ k: TimerKey) {
        flags([k.step != nil, k.item != nil])
        enumCase(k.kind)
        if let v = k.step { int(v) }
        if let v = k.item { int(v) }
        int(k.attempt)
    }

    mutating func step(_ s: StepState, instanceID: String, workflowID: String) {
        flags([
            s.items != nil, s.output != nil, s.error != nil, s.completedSeq != nil, s.startedAt != nil, s.finishedAt != nil, s.attemptBase != 0,
            s.compensationAttemptBase != 0, s.escalated, !s.units.isEmpty,
        ])
        enumCase(s.status)
        if let items = s.items {
            uint(UInt64(items.count))
            for item in items { json(item) }
        }
        if let v = s.output { json(v) }
        if let v = s.error { string(v) }
        if let v = s.completedSeq { int(v) }
        if let v = s.startedAt { int(v) }
        if let v = s.finishedAt { int(v) }
        if s.attemptBase != 0 { int(s.attemptBase) }
        if s.compensationAttemptBase != 0 { int(s.compensationAttemptBase) }
        if !s.units.isEmpty {
            uint(UInt64(s.units.count))
            for u in s.units { unit(u, instanceID: instanceID, workflowID: workflowID) }
        }
    }

    mutating func unit(_ u: UnitState, instanceID: String, workflowID: String) {
        flags([
            u.attempt != 0, u.output != nil, u.error != nil, u.completedSeq != nil, u.compensation != nil, u.compensationAttempt != 0,
            u.compensationError != nil, u.compensatedSeq != nil, u.progress != nil, u.heartbeatAt != nil, u.task != nil,
        ])
        enumCase(u.status)
        if u.attempt != 0 { int(u.attempt) }
        if let v = u.output { json(v) }
        if let v = u.error { string(v) }
        if let v = u.completedSeq { int(v) }
        if let v = u.compensation { enumCase(v) }
        if u.compensationAttempt != 0 { int(u.compensationAttempt) }
        if let v = u.compensationError { string(v) }
        if let v = u.compensatedSeq { int(v) }
        if let v = u.progress { json(v) }
        if let v = u.heartbeatAt { int(v) }
        if let v = u.task { task(v, instanceID: instanceID, workflowID: workflowID) }
    }

    /// A task repeats its instance's id and workflow, and its id is made of them: flags say when, and they are
    /// left out.
    mutating func task(_ t: HumanTask, instanceID: String, workflowID: String) {
        let sameInstance = t.instanceID == instanceID, sameWorkflow = t.workflowID == workflowID
        let derivedID = t.taskID == HumanTask.id(instanceID: t.instanceID, step: t.step, attempt: t.attempt)
        flags([t.claimedBy != nil, !t.history.isEmpty, sameInstance, sameWorkflow, derivedID])
        if !derivedID { string(t.taskID) }
        if !sameInstance { string(t.instanceID) }
        if !sameWorkflow { string(t.workflowID) }
        string(t.step)
        int(t.attempt)
        string(t.assignee)
        string(t.title)
        json(t.input)
        int(t.createdAt)
        int(t.dueAt)
        if let v = t.claimedBy { string(v) }
        if !t.history.isEmpty {
            uint(UInt64(t.history.count))
            for a in t.history {
                flags([a.by != nil, a.to != nil, a.comment != nil, a.request != nil])
                enumCase(a.action)
                int(a.at)
                if let v = a.by { string(v) }
                if let v = a.to { string(v) }
                if let v = a.comment { string(v) }
                if let v = a.request { string(v) }
            }
        }
    }
}

struct BinaryReader: ~Copyable {
    private let base: UnsafeRawBufferPointer
    private var i = 0
    private var depth = 0

    init(_ base: UnsafeRawBufferPointer) { self.base = base }

    var atEnd: Bool { i == base.count }

    private func fail(_ why: String) -> StateBinary.DecodeError { StateBinary.DecodeError(reason: "\(why) at byte \(i)") }

    mutating func byte() throws -> UInt8 {
        guard i < base.count else { throw fail("unexpected end") }
        defer { i += 1 }
        return base[i]
    }

    mutating func uint() throws -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            guard shift < 64 else { throw fail("integer too long") }
            v |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return v }
            shift += 7
        }
    }

    mutating func int64() throws -> Int64 {
        let u = try uint()
        return Int64(bitPattern: (u >> 1) ^ (0 &- (u & 1)))
    }

    mutating func int() throws -> Int { Int(try int64()) }

    mutating func count() throws -> Int {
        let n = try uint()
        guard n <= UInt64(base.count - i) else { throw fail("a count larger than what is left") }
        return Int(n)
    }

    mutating func string() throws -> String {
        let n = try count()
        defer { i += n }
        guard let s = String(validating: UnsafeRawBufferPointer(rebasing: base[i..<(i + n)]), as: UTF8.self) else { throw fail("invalid UTF-8") }
        return s
    }

    mutating func flags() throws -> UInt64 { try uint() }

    mutating func json() throws -> JSON {
        switch try byte() {
        case 0: return .null
        case 1: return .bool(false)
        case 2: return .bool(true)
        case 3: return .number(Double(try int64()))
        case 4: return .number(Double(bitPattern: try uint()))
        case 5: return .string(try string())
        case 6:
            depth += 1
            defer { depth -= 1 }
            guard depth <= DocumentLimits.maxNesting else { throw fail("nested too deep") }
            let n = try count()
            var items: [JSON] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try json()) }
            return .array(items)
        case 7:
            depth += 1
            defer { depth -= 1 }
            guard depth <= DocumentLimits.maxNesting else { throw fail("nested too deep") }
            let n = try count()
            var fields: [String: JSON] = [:]
            fields.reserveCapacity(n)
            for _ in 0..<n {
                let k = try string()
                fields[k] = try json()
            }
            return .object(fields)
        default: throw fail("unknown value tag")
        }
    }

    mutating func enumCase<E: CaseIterable>(_: E.Type) throws -> E {
        let index = Int(try byte())
        guard index < E.allCases.count else { throw fail("unknown \(E.self) case") }
        return E.allCases[E.allCases.index(E.allCases.startIndex, offsetBy: index)]
    }

    mutating func state() throws -> InstanceState {
        let f = try flags()
        func has(_ bit: UInt64) -> Bool { f & (1 << bit) != 0 }
        var s = InstanceState(
            instanceID: try string(), workflowID: try string(), version: try int(), status: try enumCase(InstanceStatus.self), input: try json(),
            startedAt: try int64(), steps: [])
        if has(0) { s.finishedAt = try int64() }
        if has(1) { s.deadline = try int64() }
        if has(2) { s.reason = try string() }
        if has(3) { s.failedStep = try string() }
        if has(4) { s.suspension = try enumCase(SuspensionReason.self) }
        if has(5) { s.output = try json() }
        if has(6) { s.startRequest = try string() }
        if has(7) {
            var trace: [String: String] = [:]
            for _ in 0..<(try count()) {
                let k = try string()
                trace[k] = try string()
            }
            s.trace = trace
        }
        s.cancelRequested = has(8)
        if has(9) {
            let n = try count()
            s.timers.reserveCapacity(n)
            for _ in 0..<n {
                let key = try timerKey()
                s.timers.append(ArmedTimer(key: key, dueAt: try int64()))
            }
        }
        if has(10) {
            let n = try count()
            for _ in 0..<n { s.requests.append(try string()) }
        }
        if has(11) { s.completionCounter = try int() }
        if has(12) { s.generation = try int() }
        if has(13) {
            guard case .object(let signals) = try json() else { throw fail("signals are not an object") }
            s.signals = signals
        }
        let n = try count()
        s.steps.reserveCapacity(n)
        for _ in 0..<n { s.steps.append(try step(instanceID: s.instanceID, workflowID: s.workflowID)) }
        return s
    }

    mutating func timerKey() throws -> TimerKey {
        let f = try flags()
        let kind = try enumCase(TimerKind.self)
        let step = f & 1 != 0 ? try int() : nil
        let item = f & 2 != 0 ? try int() : nil
        return TimerKey(kind: kind, step: step, item: item, attempt: try int())
    }

    mutating func step(instanceID: String, workflowID: String) throws -> StepState {
        let f = try flags()
        func has(_ bit: UInt64) -> Bool { f & (1 << bit) != 0 }
        var s = StepState()
        s.status = try enumCase(StepStatus.self)
        if has(0) {
            let n = try count()
            var items: [JSON] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try json()) }
            s.items = items
        }
        if has(1) { s.output = try json() }
        if has(2) { s.error = try string() }
        if has(3) { s.completedSeq = try int() }
        if has(4) { s.startedAt = try int64() }
        if has(5) { s.finishedAt = try int64() }
        if has(6) { s.attemptBase = try int() }
        if has(7) { s.compensationAttemptBase = try int() }
        s.escalated = has(8)
        if has(9) {
            let n = try count()
            s.units.reserveCapacity(n)
            for _ in 0..<n { s.units.append(try unit(instanceID: instanceID, workflowID: workflowID)) }
        }
        return s
    }

    mutating func unit(instanceID: String, workflowID: String) throws -> UnitState {
        let f = try flags()
        func has(_ bit: UInt64) -> Bool { f & (1 << bit) != 0 }
        var u = UnitState()
        u.status = try enumCase(UnitStatus.self)
        if has(0) { u.attempt = try int() }
        if has(1) { u.output = try json() }
        if has(2) { u.error = try string() }
        if has(3) { u.completedSeq = try int() }
        if has(4) { u.compensation = try enumCase(CompensationStatus.self) }
        if has(5) { u.compensationAttempt = try int() }
        if has(6) { u.compensationError = try string() }
        if has(7) { u.compensatedSeq = try int() }
        if has(8) { u.progress = try json() }
        if has(9) { u.heartbeatAt = try int64() }
        if has(10) { u.task = try task(instanceID: instanceID, workflowID: workflowID) }
        return u
    }

    mutating func task(instanceID: String, workflowID: String) throws -> HumanTask {
        let f = try flags()
        let taskID = f & 16 != 0 ? nil : try string()
        let instance = f & 4 != 0 ? instanceID : try string()
        let workflow = f & 8 != 0 ? workflowID : try string()
        let step = try string(), attempt = try int()
        var t = HumanTask(
            taskID: taskID ?? HumanTask.id(instanceID: instance, step: step, attempt: attempt), instanceID: instance, workflowID: workflow, step: step,
            attempt: attempt, assignee: try string(), title: try string(), input: try json(), createdAt: try int64(), dueAt: try int64())
        if f & 1 != 0 { t.claimedBy = try string() }
        if f & 2 != 0 {
            let n = try count()
            t.history.reserveCapacity(n)
            for _ in 0..<n {
                let af = try flags()
                var a = TaskActivity(try enumCase(TaskActivity.Action.self), at: try int64())
                if af & 1 != 0 { a.by = try string() }
                if af & 2 != 0 { a.to = try string() }
                if af & 4 != 0 { a.comment = try string() }
                if af & 8 != 0 { a.request = try string() }
                t.history.append(a)
            }
        }
        return t
    }
}

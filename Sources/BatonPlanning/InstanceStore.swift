import BatonCore
import Foundation

/// The instances of an owned partition. An instance that is running is kept decoded; one that only waits (for
/// a person, for an operator, or for its retention to end once finished) is kept in the compact binary form of
/// `StateBinary`, a fraction of the decoded size, and decoded again when an event or a timer touches it. A coordinator holds
/// every instance of its partitions until its retention ends, and most of them wait.
public struct InstanceStore: Sendable {
    private var live: [String: InstanceState] = [:]
    private var idle: [String: Data] = [:]

    public init() {}

    public var count: Int { live.count + idle.count }

    /// Whether an instance in `status` is kept encoded between events.
    public static func keepsEncoded(_ status: InstanceStatus) -> Bool {
        switch status {
        case .running, .compensating: false
        case .waiting, .suspended, .completed, .failed, .cancelled: true
        }
    }

    /// The instance's state, decoded if it was kept encoded (it stays encoded: `thaw` keeps it decoded).
    public subscript(id: String) -> InstanceState? {
        get {
            if let state = live[id] { return state }
            return idle[id].map { Self.decode($0, id) }
        }
        set {
            idle[id] = nil
            live[id] = newValue
        }
    }

    /// Decodes an instance kept encoded, ahead of changes to it, so that it is decoded once however often it is
    /// read until it settles again.
    public mutating func thaw(_ id: String) {
        guard let bytes = idle.removeValue(forKey: id) else { return }
        live[id] = Self.decode(bytes, id)
    }

    /// Keeps the instance encoded if it now only waits.
    public mutating func settle(_ id: String) {
        guard let state = live[id], Self.keepsEncoded(state.status) else { return }
        live[id] = nil
        idle[id] = StateBinary.encode(state)
    }

    /// Adds an instance as it was rebuilt.
    public mutating func insert(_ state: InstanceState) {
        if Self.keepsEncoded(state.status) {
            idle[state.instanceID] = StateBinary.encode(state)
        } else {
            live[state.instanceID] = state
        }
    }

    /// The workflow and status of every instance, without decoding the encoded ones whole.
    public func forEachStatus(_ body: (_ workflowID: String, _ status: InstanceStatus) -> Void) {
        for state in live.values { body(state.workflowID, state.status) }
        for (id, bytes) in idle {
            // Our own encoding: the front always reads (else the whole of it fails to decode, and that stops).
            let found = StateBinary.workflowAndStatus(bytes) ?? { let s = Self.decode(bytes, id); return (s.workflowID, s.status) }()
            body(found.workflowID, found.status)
        }
    }

    /// Our own encoding of a state we held decoded a moment ago: the codec's property tests show it reads back
    /// equal. Failing here is a bug in the codec, and going on without the instance would lose it, so stop.
    private static func decode(_ bytes: Data, _ id: String) -> InstanceState {
        do { return try StateBinary.decode(bytes) } catch {
            preconditionFailure("instance \(id) was kept encoded and does not decode: \(error)")
        }
    }
}

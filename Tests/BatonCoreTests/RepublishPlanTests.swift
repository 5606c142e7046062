import BatonCore
import BatonWire
import Foundation
import Testing

/// `Republish.plan`: what sending a dead letter again may write.
@Suite("Republish: only a fix of the same kind, for the same instance; never authority or commands")
struct RepublishPlanTests {
    let names = TopicNames(namespace: "t")

    func plan(_ topic: String? = nil, key: String = "i-1", original: String?, replacement: String?) throws(RepublishRefusal) -> Republish.Plan {
        try Republish.plan(
            topic: topic ?? names.events, names: names, key: Data(key.utf8), original: original.map { Data($0.utf8) }, isWhole: true,
            replacement: replacement.map { try! JSON.parse(Data($0.utf8)) })  // the tests write only valid JSON here
    }

    func refusal(_ topic: String? = nil, original: String?, replacement: String?) -> RepublishRefusal? {
        do {
            _ = try plan(topic, original: original, replacement: replacement)
            return nil
        } catch { return error }
    }

    static func completed(_ instance: String = "i-1", attempt: Int) -> String {
        #"{"v":1,"kind":"step.completed","instance_id":"\#(instance)","step":"a","attempt":\#(attempt),"output":{"n":1}}"#
    }
    static let decided = #"{"v":1,"kind":"task.decided","instance_id":"i-1","task_id":"i-1/r/1","step":"r","attempt":1,"approved":true,"by":"carol","override":true}"#

    @Test func withoutAReplacementOrWithTheSameRecordItGoesBackAsItWas() throws {
        let original = Self.decided
        let asItWas = try plan(original: original, replacement: nil)
        #expect(asItWas.value == Data(original.utf8) && !asItWas.replaced && asItWas.kind == nil)
        // The same JSON written otherwise is the same record.
        let same = #"{ "override": true, "by": "carol", "approved": true, "attempt": 1, "step": "r", "task_id": "i-1/r/1", "instance_id": "i-1", "kind": "task.decided", "v": 1 }"#
        #expect(try plan(original: original, replacement: same).replaced == false)
    }

    @Test func authorityRecordsAndCommandsAreNeverReplaced() {
        #expect(refusal(original: "{junk", replacement: Self.decided)?.status == .forbidden)
        #expect(refusal(original: Self.decided.replacingOccurrences(of: "carol", with: "dan"), replacement: Self.decided)?.status == .forbidden)
        let signal = #"{"v":1,"kind":"signal","instance_id":"i-1","name":"go","by":"carol","request_id":"r"}"#
        #expect(refusal(original: "{junk", replacement: signal)?.status == .forbidden)
        #expect(refusal(original: "{junk", replacement: signal.replacingOccurrences(of: #""by":"carol","#, with: ""))?.status == nil)
        let command = #"{"v":1,"kind":"step.command","instance_id":"i-1","attempt":1}"#
        #expect(refusal(names.commands("pay"), original: command, replacement: command.replacingOccurrences(of: "1}", with: "2}"))?.status == .forbidden)
        #expect(refusal(names.mailboxes, original: "{}", replacement: "{\"a\":1}")?.status == .badRequest)
    }

    @Test func aFixMustDecodeBeOfTheSameKindAndForTheSameInstance() throws {
        let broken = Self.completed(attempt: 0)
        #expect(try plan(original: broken, replacement: Self.completed(attempt: 1)).replaced)
        #expect(try plan(original: "{junk", replacement: Self.completed(attempt: 1)).kind == .stepCompleted)
        // The same broken record, however written, goes back as it was; another one that does not decode is refused.
        #expect(try plan(original: broken, replacement: Self.completed(attempt: 0)).replaced == false)
        #expect(refusal(original: broken, replacement: Self.completed(attempt: 0).replacingOccurrences(of: #""n":1"#, with: #""n":2"#))?.status == .badRequest)
        #expect(refusal(original: broken, replacement: #"{"v":1,"kind":"step.failed","instance_id":"i-1","step":"a","attempt":1,"error":"x"}"#)?.status == .badRequest)
        #expect(refusal(original: broken, replacement: Self.completed("i-2", attempt: 1))?.reason.contains("same instance") == true)
        #expect(refusal(original: Self.completed(attempt: 1), replacement: Self.completed(attempt: 2)) == nil)
    }
}

extension RepublishRefusal: Equatable {
    public static func == (a: RepublishRefusal, b: RepublishRefusal) -> Bool { a.status == b.status && a.reason == b.reason }
}

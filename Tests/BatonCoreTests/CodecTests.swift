@testable import BatonCore
@testable import BatonWire
import Foundation
import PropertyBased
import Testing

/// The hand-written JSON of the hot path against Foundation's: the same bytes out, the same values in, and old
/// snapshots still read.
@Suite("Hand-written JSON coding of states and records")
struct CodecTests {
    static let runs = ProcessInfo.processInfo.environment["BATON_PROPERTY_RUNS"].flatMap(Int.init) ?? 400

    /// What the engine wrote before the hand-written coder (and what `Codable` still writes).
    static func foundationJSON<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    static func text(_ data: Data) -> String { String(decoding: data, as: UTF8.self) }

    @Test func randomJSONValuesAreWrittenAsFoundationWritesThemAndReadBack() async throws {
        await propertyCheck(count: Self.runs, input: Gen.int(in: 0...Int.max)) { seed in
            var rng = SplitMix(state: UInt64(seed))
            let value = Random.json(&rng, depth: 0)
            let ours = value.encoded()
            guard let theirs = try? Self.foundationJSON(value) else {
                Issue.record("Foundation could not encode \(value)")
                return
            }
            #expect(Self.text(ours) == Self.text(theirs), "seed \(seed)")
            let back = try? JSONTextReader.read(ours) { try $0.value() }
            #expect(back == value, "seed \(seed): \(Self.text(ours))")
            #expect((try? JSONDecoder().decode(JSON.self, from: ours)) == value, "seed \(seed)")
            #expect(value.encodedSize == ours.count)
        }
    }

    @Test func randomStatesEncodeAsBeforeByteForByteAndDecodeAsJSONDecoderDoes() async throws {
        await propertyCheck(count: Self.runs, input: Gen.int(in: 0...Int.max)) { seed in
            var rng = SplitMix(state: UInt64(seed))
            let state = Random.state(&rng)
            let ours = StateCodec.encode(state)
            guard let theirs = try? Self.foundationJSON(state) else {
                Issue.record("Foundation could not encode the state of seed \(seed)")
                return
            }
            #expect(ours.prefix(2) == Data([StateCodec.magic, StateCodec.version]))
            #expect(Self.text(ours.dropFirst(2)) == Self.text(theirs), "seed \(seed)")
            // The hand-written reader itself takes it (no fallback), and agrees with JSONDecoder.
            let fast = try? JSONTextReader.read(ours.dropFirst(2)) { try InstanceState(reading: &$0) }
            let foundation = try? JSONDecoder().decode(InstanceState.self, from: theirs)
            #expect(fast != nil, "seed \(seed): the fast reader refused \(Self.text(theirs))")
            #expect(fast == foundation, "seed \(seed)")
            #expect((try? StateCodec.decode(ours)) == foundation, "seed \(seed)")
            // The snapshot (outputs left out without copying the state) is the state without outputs, written.
            #expect(StateCodec.encodeSnapshot(state) == StateCodec.encode(state.withoutOutputs), "seed \(seed)")
        }
    }

    @Test func theBinaryFormGivesBackAnEqualStateAndIsSmaller() async throws {
        await propertyCheck(count: Self.runs, input: Gen.int(in: 0...Int.max)) { seed in
            var rng = SplitMix(state: UInt64(seed))
            var state = Random.state(&rng)
            // Tasks as the saga makes them (ids derived from the instance) and as anything else might.
            if rng.chance(0.5) {
                for s in state.steps.indices {
                    for u in state.steps[s].units.indices where state.steps[s].units[u].task != nil {
                        state.steps[s].units[u].task!.instanceID = state.instanceID
                        state.steps[s].units[u].task!.workflowID = state.workflowID
                        let t = state.steps[s].units[u].task!
                        state.steps[s].units[u].task!.taskID = HumanTask.id(instanceID: t.instanceID, step: t.step, attempt: t.attempt)
                    }
                }
            }
            // Values JSON would not keep apart keep their identity here: -0, a present null.
            if rng.chance(0.2) { state.output = .null }
            let odd = rng.chance(0.2)
            if odd { state.input = .array([.number(-0.0), .number(.infinity), .number(1e300), .number(0.1)]) }
            let bytes = StateBinary.encode(state)
            let back = try? StateBinary.decode(bytes)
            #expect(back == state, "seed \(seed)")
            #expect(StateBinary.workflowAndStatus(bytes).map { $0.workflowID == state.workflowID && $0.status == state.status } == true)
            if odd { #expect(back?.input.arrayValue?.first?.numberValue?.sign == .minus, "seed \(seed): -0 lost its sign") }
            if !odd { #expect(bytes.count < StateCodec.encode(state).count, "seed \(seed)") }
            // Cut anywhere, it is refused, never misread.
            if bytes.count > 2 {
                let cut = Int.random(in: 1..<bytes.count, using: &rng)
                #expect(throws: (any Error).self) { try StateBinary.decode(bytes.prefix(cut)) }
            }
        }
    }

    @Test func snapshotsWrittenByEarlierVersionsAreStillRead() throws {
        // A 0.1 snapshot: the task with camel-case field names, an integer written as 1.0, fields in another
        // order and an unknown field. The hand-written reader leaves it to JSONDecoder, which reads it.
        let old = #"""
            {"workflowID":"loan","instanceID":"l-1","version":1,"status":"waiting","input":{"amount":5000},"startedAt":1764064800000,
            "steps":[{"s":"active","t0":1764064800000,"u":[{"s":"running","a":1.0,"t":{"taskID":"l-1/approve/1","instanceID":"l-1",
            "workflowID":"loan","step":"approve","attempt":1,"assignee":"role:credit","title":"Approve","input":{"amount":5000},
            "createdAt":1764064800000,"dueAt":1764237600000}}]}],"timers":[{"key":{"kind":"taskTimeout","step":0,"attempt":1},
            "dueAt":1764237600000}],"completionCounter":0,"cancelRequested":false,"requests":[],"generation":0,"retired":true}
            """#
        var data = Data([StateCodec.magic, StateCodec.version])
        data.append(Data(old.utf8))
        let state = try StateCodec.decode(data)
        #expect(state.instanceID == "l-1" && state.status == .waiting)
        #expect(state.steps[0].units[0].attempt == 1)
        #expect(state.steps[0].units[0].task?.taskID == "l-1/approve/1" && state.steps[0].units[0].task?.dueAt == 1_764_237_600_000)
        #expect(state.timers == [ArmedTimer(key: TimerKey(kind: .taskTimeout, step: 0, attempt: 1), dueAt: 1_764_237_600_000)])
        // Written again, it is in today's form, and the fast reader takes that.
        let again = StateCodec.encode(state)
        #expect(try JSONTextReader.read(again.dropFirst(2)) { try InstanceState(reading: &$0) } == state)
    }

    @Test func aSnapshotOfAnotherFormatVersionIsRefusedWithItsVersion() {
        #expect(throws: StateCodec.DecodeError.self) { try StateCodec.decode(Data([StateCodec.magic, 9]) + Data("{}".utf8)) }
        do {
            _ = try StateCodec.decode(Data([StateCodec.magic, 9]) + Data("{}".utf8))
        } catch {
            #expect(error.reason.contains("format version 9 is not supported"))
        }
    }

    @Test func randomRecordsAreWrittenAsFoundationWritesThemAndReadBack() async throws {
        await propertyCheck(count: Self.runs, input: Gen.int(in: 0...Int.max)) { seed in
            var rng = SplitMix(state: UInt64(seed))
            let command = Random.command(&rng)
            let result = Random.result(&rng)
            let start = Random.start(&rng)
            let output = OutputRecord(
                instanceID: Random.string(&rng), step: Random.string(&rng), item: rng.chance(0.5) ? Int.random(in: 0...99, using: &rng) : nil,
                attempt: Int.random(in: 1...9, using: &rng), output: Random.json(&rng, depth: 0))
            let timer = TimerMessage(instanceID: Random.string(&rng), timer: Random.timerKey(&rng), dueAt: Int64.random(in: 0...(1 << 50), using: &rng))
            let task = TaskRecord(
                taskID: Random.string(&rng), status: .open, task: rng.chance(0.8) ? Random.task(&rng) : nil,
                decidedBy: rng.chance(0.3) ? Random.string(&rng) : nil, partition: Int32.random(in: 0...63, using: &rng), at: 1_764_064_800_000)
            #expect(Self.text(Wire.encode(command)) == Self.text((try? Self.foundationJSON(command)) ?? Data()), "seed \(seed)")
            #expect(Self.text(Wire.encode(result)) == Self.text((try? Self.foundationJSON(result)) ?? Data()), "seed \(seed)")
            #expect(Self.text(Wire.encode(start)) == Self.text((try? Self.foundationJSON(start)) ?? Data()), "seed \(seed)")
            #expect(Self.text(Wire.encode(output)) == Self.text((try? Self.foundationJSON(output)) ?? Data()), "seed \(seed)")
            #expect(Self.text(Wire.encode(timer)) == Self.text((try? Self.foundationJSON(timer)) ?? Data()), "seed \(seed)")
            #expect(Self.text(Wire.encode(task)) == Self.text((try? Self.foundationJSON(task)) ?? Data()), "seed \(seed)")

            // Read by hand, the same values as JSONDecoder reads.
            let commandBytes = Wire.encode(command)
            #expect(CommandMessage.fastDecode(commandBytes) != nil, "seed \(seed)")
            #expect(CommandMessage.fastDecode(commandBytes) == (try? Wire.decode(CommandMessage.self, from: commandBytes)), "seed \(seed)")
            // A result's token (which the coordinator checks) read by hand as JSONDecoder reads it.
            let resultBytes = Wire.encode(result)
            #expect(EventMessage.fastDecode(resultBytes)?.2?.token == result.token, "seed \(seed)")
            #expect((try? Wire.decode(ResultMessage.self, from: resultBytes))?.token == result.token, "seed \(seed)")
            let outputBytes = Wire.encode(output)
            #expect(OutputRecord.fastDecode(outputBytes) != nil && OutputRecord.fastDecode(outputBytes) == (try? Wire.decode(OutputRecord.self, from: outputBytes)))
            for (bytes, slow) in [
                (Wire.encode(result), Self.slowEvent(Wire.encode(result))), (Wire.encode(start), Self.slowEvent(Wire.encode(start))),
                (Wire.encode(timer), Self.slowEvent(Wire.encode(timer))),
            ] {
                let fast = Result { () throws(Wire.DecodeError) in try EventMessage.decode(bytes) }
                switch (fast, slow) {
                case (.success(let a), .success(let b)): #expect(a == b, "seed \(seed): \(Self.text(bytes))")
                case (.failure(let a), .failure(let b)): #expect(a.reason == b.reason, "seed \(seed): \(Self.text(bytes))")
                default: Issue.record("seed \(seed): \(fast) against \(slow) for \(Self.text(bytes))")
                }
            }
        }
    }

    /// How `EventMessage.decode` read a record before the hand-written reader: with JSONDecoder only.
    static func slowEvent(_ data: Data) -> Result<EventMessage, Wire.DecodeError> {
        Result { () throws(Wire.DecodeError) in
            let kind = try Wire.kind(of: data)
            switch kind {
            case .start:
                let m = try Wire.decode(StartMessage.self, from: data)
                try InstanceID.check(m.instanceID, field: "instance_id")
                guard !m.workflowID.isEmpty else { throw Wire.DecodeError("field 'workflow_id' must not be empty") }
                return .start(m)
            case .timerFired:
                let m = try Wire.decode(TimerMessage.self, from: data)
                return .event(instanceID: m.instanceID, .timerFired(m.timer, dueAt: m.dueAt))
            default:
                var m = try Wire.decode(ResultMessage.self, from: data)
                guard m.attempt >= 1 else { throw Wire.DecodeError("field 'attempt' is \(m.attempt); attempts are numbered from 1 (answer with the command's attempt)") }
                m.error = m.error.map { Wire.cut($0, to: Wire.maxErrorBytes) }
                switch kind {
                case .stepCompleted: return .event(instanceID: m.instanceID, .stepCompleted(step: m.step, item: m.item, attempt: m.attempt, output: m.output ?? .null))
                case .stepFailed:
                    return .event(instanceID: m.instanceID, .stepFailed(step: m.step, item: m.item, attempt: m.attempt, error: m.error ?? "failed", retryable: m.retryable ?? true))
                case .compensationCompleted: return .event(instanceID: m.instanceID, .compensationCompleted(step: m.step, item: m.item, attempt: m.attempt))
                default: return .event(instanceID: m.instanceID, .compensationFailed(step: m.step, item: m.item, attempt: m.attempt, error: m.error ?? "failed"))
                }
            }
        }
    }

    @Test func recordsTheFastReaderRefusesGetJSONDecodersVerdict() {
        func reason(_ text: String) -> String? {
            do {
                _ = try EventMessage.decode(Data(text.utf8))
                return nil
            } catch { return error.reason }
        }
        #expect(reason(#"{"v":1,"kind":"step.completed","instance_id":"i"}"#)?.contains("field 'step' is missing") == true)
        #expect(reason(#"{"v":2,"kind":"step.completed","instance_id":"i","step":"a","attempt":1}"#)?.contains("protocol version 2 is not supported") == true)
        #expect(reason(#"{"v":1,"kind":"step.completed","instance_id":"i","step":"a","attempt":0}"#)?.contains("attempts are numbered from 1") == true)
        #expect(reason("not json")?.hasPrefix("not a JSON object") == true)
        #expect(reason(#"{"v":1,"kind":"nope","instance_id":"i"}"#)?.hasPrefix("unknown kind 'nope'") == true)
        #expect(reason(String(repeating: "[", count: 200) + String(repeating: "]", count: 200))?.contains("nested more than") == true)
        // What JSONDecoder accepts, the engine accepts, even where the fast reader does not (an attempt of 1.0).
        #expect(reason(#"{"v":1,"kind":"step.completed","instance_id":"i","step":"a","attempt":1.0,"output":{"x":1}}"#) == nil)
    }

    @Test func theReaderRefusesMalformedTextAndSaysWhere() {
        func error(_ text: [UInt8]) -> JSONTextError? {
            do {
                _ = try JSONTextReader.read(Data(text)) { try $0.value() }
                return nil
            } catch { return error as? JSONTextError }
        }
        #expect(error(Array(#"{"a":1} x"#.utf8))?.reason == "text after the value")
        #expect(error(Array(#"{"a":01}"#.utf8))?.reason == "invalid number")
        #expect(error(Array(#"["a\ud800"]"#.utf8))?.reason == "unpaired surrogate in a string")
        #expect(error([0x22, 0xFF, 0x22])?.reason == "invalid UTF-8 in a string")
        #expect(error(Array("[\"a\nb\"]".utf8))?.reason == "control character in a string")
        #expect(error(Array((String(repeating: "[", count: 129) + String(repeating: "]", count: 129)).utf8))?.reason.contains("nested more than 128") == true)
        #expect(error(Array(#"{"a":1"#.utf8))?.offset == 6)
        let parsed = try? JSONTextReader.read(Data(#" {"a":[1,2.5,-3e2,"\u00e9\ud83d\ude00\n",true,null]} "#.utf8)) { try $0.value() }
        #expect(parsed == ["a": [1, 2.5, -300, "é😀\n", true, nil]])
    }
}

/// Random values for the codec properties: every optional field sometimes set, strings with escapes, control
/// characters and characters outside the BMP, numbers whole and not.
enum Random {
    static let alphabet: [String] = ["a", "b", "Z", "_", "-", "/", "\\", "\"", "\n", "\t", "\u{01}", "\u{1F}", "é", "€", "😀", " ", "0", "9", "#", "\u{7F}"]

    static func string(_ rng: inout SplitMix) -> String {
        (0..<Int.random(in: 0...12, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }.joined()
    }

    static func number(_ rng: inout SplitMix) -> Double {
        switch Int.random(in: 0...5, using: &rng) {
        case 0: return Double(Int.random(in: -1000...1000, using: &rng))
        case 1: return Double(Int64.random(in: -(1 << 52)...(1 << 52), using: &rng))
        case 2: return Double.random(in: -1e6...1e6, using: &rng)
        case 3: return Double.random(in: -1...1, using: &rng) * 1e-9
        case 4: return [0.1, 0.5, 1.5, -2.25, 1e20, 1e300, 123456789.125].randomElement(using: &rng)!
        default: return Double(Int.random(in: 0...9, using: &rng)) / 10
        }
    }

    static func json(_ rng: inout SplitMix, depth: Int) -> JSON {
        switch Int.random(in: 0...(depth >= 3 ? 3 : 5), using: &rng) {
        case 0: return .null
        case 1: return .bool(rng.chance(0.5))
        case 2: return .number(number(&rng))
        case 3: return .string(string(&rng))
        case 4: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in json(&rng, depth: depth + 1) })
        default:
            var fields: [String: JSON] = [:]
            for _ in 0..<Int.random(in: 0...5, using: &rng) { fields[string(&rng)] = json(&rng, depth: depth + 1) }
            return .object(fields)
        }
    }

    static func maybe<T>(_ rng: inout SplitMix, _ make: (inout SplitMix) -> T) -> T? { rng.chance(0.5) ? make(&rng) : nil }
    static func int(_ rng: inout SplitMix) -> Int { Int.random(in: 0...50, using: &rng) }
    static func time(_ rng: inout SplitMix) -> Int64 { Int64.random(in: 1_700_000_000_000...1_800_000_000_000, using: &rng) }

    static func timerKey(_ rng: inout SplitMix) -> TimerKey {
        TimerKey(
            kind: [.retry, .stepTimeout, .taskTimeout, .compensationRetry, .compensationTimeout, .workflowTimeout, .heartbeat, .retention]
                .randomElement(using: &rng)!, step: maybe(&rng, int), item: maybe(&rng, int), attempt: int(&rng))
    }

    static func task(_ rng: inout SplitMix) -> HumanTask {
        let history = (0..<Int.random(in: 0...4, using: &rng)).map { _ in
            TaskActivity(
                TaskActivity.Action.allCases.randomElement(using: &rng)!, at: time(&rng), by: maybe(&rng, string), to: maybe(&rng, string),
                comment: maybe(&rng, string), request: maybe(&rng, string))
        }
        return HumanTask(
            taskID: string(&rng), instanceID: string(&rng), workflowID: string(&rng), step: string(&rng), attempt: int(&rng),
            assignee: string(&rng), title: string(&rng), input: json(&rng, depth: 1), createdAt: time(&rng), dueAt: time(&rng),
            claimedBy: maybe(&rng, string), history: history)
    }

    static func unit(_ rng: inout SplitMix) -> UnitState {
        var u = UnitState()
        u.status = [.pending, .running, .backoff, .completed, .failed].randomElement(using: &rng)!
        u.attempt = rng.chance(0.3) ? 0 : int(&rng)
        u.output = maybe(&rng) { json(&$0, depth: 1) }
        u.error = maybe(&rng, string)
        u.completedSeq = maybe(&rng, int)
        u.compensation = maybe(&rng) { [.running, .backoff, .done, .failed, .skipped].randomElement(using: &$0)! }
        u.compensationAttempt = rng.chance(0.5) ? 0 : int(&rng)
        u.compensationError = maybe(&rng, string)
        u.compensatedSeq = maybe(&rng, int)
        u.progress = maybe(&rng) { json(&$0, depth: 2) }
        u.heartbeatAt = maybe(&rng, time)
        u.task = rng.chance(0.3) ? task(&rng) : nil
        return u
    }

    static func step(_ rng: inout SplitMix) -> StepState {
        var s = StepState()
        s.status = [.pending, .active, .completed, .failed, .skipped].randomElement(using: &rng)!
        s.units = (0..<Int.random(in: 0...3, using: &rng)).map { _ in unit(&rng) }
        s.items = rng.chance(0.2) ? (0..<Int.random(in: 0...3, using: &rng)).map { _ in json(&rng, depth: 2) } : nil
        // Often the derivable case: a plain completed step whose output is its unit's.
        s.output = rng.chance(0.5) ? s.units.first?.output : maybe(&rng) { json(&$0, depth: 1) }
        s.error = maybe(&rng, string)
        s.completedSeq = maybe(&rng, int)
        s.startedAt = maybe(&rng, time)
        s.finishedAt = maybe(&rng, time)
        s.attemptBase = rng.chance(0.7) ? 0 : int(&rng)
        s.compensationAttemptBase = rng.chance(0.7) ? 0 : int(&rng)
        s.escalated = rng.chance(0.2)
        return s
    }

    static func state(_ rng: inout SplitMix) -> InstanceState {
        var state = InstanceState(
            instanceID: string(&rng), workflowID: string(&rng), version: Int.random(in: 1...5, using: &rng),
            status: InstanceStatus.allCases.randomElement(using: &rng)!, input: json(&rng, depth: 0), startedAt: time(&rng),
            steps: (0..<Int.random(in: 0...6, using: &rng)).map { _ in step(&rng) })
        state.finishedAt = maybe(&rng, time)
        state.deadline = maybe(&rng, time)
        state.timers = (0..<Int.random(in: 0...3, using: &rng)).map { _ in ArmedTimer(key: timerKey(&rng), dueAt: time(&rng)) }
        state.completionCounter = int(&rng)
        state.reason = maybe(&rng, string)
        state.failedStep = maybe(&rng, string)
        state.suspension = maybe(&rng) { [.failure, .compensationFailed].randomElement(using: &$0)! }
        state.cancelRequested = rng.chance(0.2)
        state.output = maybe(&rng) { json(&$0, depth: 1) }
        state.requests = (0..<Int.random(in: 0...3, using: &rng)).map { _ in string(&rng) }
        state.generation = int(&rng)
        state.startRequest = maybe(&rng, string)
        state.trace = rng.chance(0.3) ? ["traceparent": "00-" + string(&rng), "tracestate": string(&rng)] : nil
        return state
    }

    static func command(_ rng: inout SplitMix) -> CommandMessage {
        let command = StepCommand(
            instanceID: string(&rng), workflowID: string(&rng), workflowVersion: Int.random(in: 1...5, using: &rng), step: string(&rng),
            type: string(&rng), pool: string(&rng), item: maybe(&rng, int), attempt: Int.random(in: 1...9, using: &rng), input: json(&rng, depth: 0),
            deadline: time(&rng), idempotencyKey: string(&rng), isCompensation: rng.chance(0.3),
            heartbeatTimeout: maybe(&rng) { Millis(Int64.random(in: 1...100_000, using: &$0)) })
        return CommandMessage(command, replyTo: ReplyTo(topic: string(&rng), partition: Int32.random(in: 0...63, using: &rng)), token: maybe(&rng, string))
    }

    static func result(_ rng: inout SplitMix) -> ResultMessage {
        ResultMessage(
            kind: [.stepCompleted, .stepFailed, .compensationCompleted, .compensationFailed].randomElement(using: &rng)!,
            instanceID: "i" + string(&rng).filter { $0.asciiValue.map { $0 >= 0x20 && $0 != 0x7F } ?? true }, step: string(&rng),
            item: maybe(&rng, int), attempt: Int.random(in: 1...9, using: &rng), output: maybe(&rng) { json(&$0, depth: 0) },
            error: maybe(&rng, string), retryable: maybe(&rng) { $0.chance(0.5) }, idempotencyKey: maybe(&rng, string), token: maybe(&rng, string))
    }

    static func start(_ rng: inout SplitMix) -> StartMessage {
        StartMessage(
            instanceID: "s" + string(&rng).filter { $0.asciiValue.map { $0 >= 0x20 && $0 != 0x7F } ?? true }, workflowID: "w" + string(&rng),
            version: maybe(&rng) { Int.random(in: 1...5, using: &$0) }, input: json(&rng, depth: 0), sentAt: maybe(&rng, time),
            requestID: maybe(&rng, string))
    }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonWire
import Foundation
import Synchronization

/// The cases (docs/conformance.md). Each writes its commands to a partition of its own, waits for what the
/// worker does, and returns notes for the reader or throws what was wrong.
extension ConformanceRun {
    func echo() async throws -> [String] {
        let value: JSON = [
            "text": "h\u{e9}llo \u{2713} \"quoted\" \\ / line\nbreak", "n": 42, "fraction": 1.5, "list": [1, "two", nil, true, false],
            "nested": ["a": ["b": [], "c": [:]]],
        ]
        let plain = try await send(instance("echo-1"), input: ["op": "echo", "value": value], partition: partition(0))
        // A for_each element's command, on a later attempt.
        let item = try await send(instance("echo-2"), step: "each", attempt: 3, item: 2, input: ["op": "echo", "value": "item two"], partition: partition(1))
        // Optional fields given as null, and a field this version of the protocol does not have: readers accept both.
        let nulls = try await send(instance("echo-3"), input: ["op": "echo", "value": nil], partition: partition(2)) { fields in
            fields["item"] = .null
            fields["heartbeat_timeout"] = .null
            fields["token"] = .null
            fields["a_later_field"] = ["added": "in a later minor version"]
        }
        let expected: [(SentCommand, JSON)] = [(plain, value), (item, "item two"), (nulls, .null)]
        let collected = try await collect(expected.map(\.0))
        var problems: [String] = []
        for (command, value) in expected {
            problems += completed(command, in: collected, output: echoed(command, value: value))
        }
        try check(problems)
        return []
    }

    func failure() async throws -> [String] {
        let hardError = "card declined: \u{fc}n\u{ef}code \u{2713}"
        let softError = "service unavailable, try again"
        let hard = try await send(instance("failure-1"), input: ["op": "fail", "error": .string(hardError), "retryable": false], partition: partition(3))
        let soft = try await send(instance("failure-2"), input: ["op": "fail", "error": .string(softError), "retryable": true], partition: partition(4))
        let collected = try await collect([hard, soft])
        var problems = failed(hard, in: collected, error: hardError, retryable: false)
        problems += failed(soft, in: collected, error: softError, retryable: true)
        try check(problems)
        return []
    }

    func compensation() async throws -> [String] {
        let error = "refund service down"
        let done = try await send(instance("compensation-1"), step: "charge", input: ["op": "echo", "value": "undo"], compensation: true, partition: partition(5))
        let fails = try await send(
            instance("compensation-2"), step: "charge", input: ["op": "fail", "error": .string(error), "retryable": true], compensation: true,
            partition: partition(6))
        let collected = try await collect([done, fails])
        var problems: [String] = []
        let (answer, found) = answer(to: done, in: collected)
        problems += found
        if let r = answer?.result, found.isEmpty, r.kind != .compensationCompleted {
            problems.append("the answer to \(done.described) is '\(r.kind.rawValue)' (error: \(r.error ?? "none")); the handler completed")
        }
        let (failure, failureProblems) = self.answer(to: fails, in: collected)
        problems += failureProblems
        if let r = failure?.result, failureProblems.isEmpty {
            if r.kind != .compensationFailed {
                problems.append("the answer to \(fails.described) is '\(r.kind.rawValue)'; the handler failed")
            } else if r.error != error {
                problems.append("the answer to \(fails.described) has error \(quoted(r.error)), the handler's was \(quoted(error))")
            }
        }
        try check(problems)
        return []
    }

    func duplicate() async throws -> [String] {
        let id = instance("duplicate")
        let p = partition(7)
        let reply = replyPartition(for: id)
        let input: JSON = ["op": "echo", "value": "twice"]
        let fields = commandFields(id, input: input, replyPartition: reply)
        let value = JSON.object(fields).encoded()
        var commands: [SentCommand] = []
        for _ in 0..<2 {
            let offset = try await write(value, key: id, partition: p)
            commands.append(
                SentCommand(
                    instanceID: id, step: "work", item: nil, attempt: 1, isCompensation: false, idempotencyKey: "\(id)/work", input: input, partition: p,
                    offset: offset, replyPartition: reply, token: fields["token"]?.stringValue))
        }
        // Answered (once or twice) and committed past both copies; then every answer is in.
        _ = try await collect(commands)
        try await settle(after: commands)
        let answers = probe.answers(for: id)
        guard !answers.isEmpty else { throw ConformanceFailure("the pool's group committed past both copies of \(commands[0].described) without answering it") }
        var problems: [String] = []
        for a in answers {
            let found = self.problems(a, for: commands[0])
            problems += found
            guard found.isEmpty, let r = a.result else { continue }
            if r.kind != .stepCompleted || r.output != echoed(commands[0], value: "twice") {
                problems.append("an answer to the copies is '\(r.kind.rawValue)' with output \(short(r.output)); expected \(short(echoed(commands[0], value: "twice")))")
            }
        }
        try check(problems)
        return ["answered \(answers.count) time\(answers.count == 1 ? "" : "s") for 2 copies"]
    }

    func oldAttempt() async throws -> [String] {
        let id = instance("old-attempt")
        let p = partition(8)
        let input: JSON = ["op": "echo", "value": "attempts"]
        let second = try await send(id, attempt: 2, input: input, partition: p)
        // Redelivered after the newer one: the same step and idempotency key, an older attempt.
        let first = try await send(id, attempt: 1, input: input, partition: p)
        let collected = try await collect([second, first])
        var problems: [String] = []
        for command in [second, first] {
            problems += completed(command, in: collected, output: echoed(command, value: "attempts"))
        }
        for a in collected.answers[id] ?? [] {
            guard let r = a.result, r.attempt != 1, r.attempt != 2 else { continue }
            problems.append("an answer has attempt \(r.attempt); the commands had attempts 2 and 1")
        }
        var once = Set<String>()
        try check(problems.filter { once.insert($0).inserted })
        return []
    }

    func token() async throws -> [String] {
        let p = partition(13)
        // The heartbeat op sends a heartbeat, then waits and echoes; heartbeat_timeout lets every SDK send it.
        let input: JSON = ["op": "heartbeat", "ms": 300, "value": "signed"]
        let signed = try await send(instance("token-1"), input: input, partition: p) { $0["heartbeat_timeout"] = 3000 }
        let unsigned = try await send(instance("token-2"), input: input, partition: p) { fields in
            fields["heartbeat_timeout"] = 3000
            fields["token"] = nil
        }
        let collected = try await collect([signed, unsigned])
        var problems: [String] = []
        for command in [signed, unsigned] {
            problems += completed(command, in: collected, output: echoed(command, value: "signed"))
        }
        // The heartbeat goes out before the result, on the same partition, so it is normally in already; a worker
        // that sends heartbeats from another producer or thread gets the answer timeout.
        func heartbeats(_ command: SentCommand) -> [HeartbeatMessage] {
            probe.heartbeats(for: command.instanceID).filter { $0.attempt == command.attempt }
        }
        let deadline = ContinuousClock.now + configuration.answerTimeout
        while [signed, unsigned].contains(where: { heartbeats($0).isEmpty }), ContinuousClock.now < deadline {
            try checkWorker()
            try await Task.sleep(for: .milliseconds(20))
        }
        for command in [signed, unsigned] {
            let heartbeats = heartbeats(command)
            if heartbeats.isEmpty {
                problems.append("no step.heartbeat for \(command.described) before its result (the op 'heartbeat' sends one, see docs/conformance.md)")
            }
            for h in heartbeats {
                if let problem = tokenProblem(h.token, for: command) { problems.append("a heartbeat for \(command.described) \(problem)") }
            }
        }
        var once = Set<String>()
        try check(problems.filter { once.insert($0).inserted })
        return []
    }

    /// A worker reports the start of an attempt (its first `step.heartbeat`) at most 1 s after it started it, so
    /// that the coordinator counts the step's timeout from then (docs/wire-protocol.md, "Reporting the start"). The
    /// command has no heartbeat_timeout: the report is owed by every step's attempt that runs that long.
    func start() async throws -> [String] {
        let ms: Int64 = 3_000
        let long = try await send(instance("start-1"), input: ["op": "sleep", "ms": .number(Double(ms)), "value": "started"], partition: partition(14)) {
            $0["timeout"] = 600_000
        }
        let collected = try await collect([long], timeout: configuration.answerTimeout + .milliseconds(ms))
        var problems = completed(long, in: collected, output: echoed(long, value: "started"))
        let result = collected.answers[long.instanceID, default: []].first { $0.result?.attempt == long.attempt }
        let reports = probe.heartbeatRecords(for: long.instanceID).filter { $0.heartbeat.attempt == long.attempt }
        var notes: [String] = []
        if let first = reports.first {
            if let problem = tokenProblem(first.heartbeat.token, for: long) { problems.append("the start report of \(long.described) \(problem)") }
            // Both timestamps are the worker's: the report came at most 1 s after the start when the result (3 s after
            // the start) came at least 2 s after it; 500 ms are allowed for a slow producer.
            if let reported = first.at, let answered = result?.message.timestamp {
                let before = answered - reported
                notes.append("reported started \(before) ms before its result (the handler runs \(ms) ms)")
                if before < ms - 1_500 {
                    problems.append("\(long.described) was reported started only \(before) ms before its result, more than 1 s after it started (it runs \(ms) ms)")
                }
            }
        } else if problems.isEmpty {
            problems.append("no step.heartbeat for \(long.described) before its result: an attempt still running 1 s after it started must be reported started")
        }
        try check(problems)
        return notes
    }

    func unreadable() async throws -> [String] {
        let p = partition(9)
        let marker = KafkaHeader(key: "conformance-probe", string: runID)
        struct Bad {
            var what: String
            var key: String
            var value: Data
            var offset: Int64 = -1
        }
        func fields(_ id: String) -> [String: JSON] {
            commandFields(id, input: ["op": "echo", "value": "must not run"], replyPartition: replyPartition(for: id))
        }
        var v2 = fields(instance("unreadable-2"))
        v2["v"] = 2
        var noReply = fields(instance("unreadable-3"))
        noReply["reply_to"] = nil
        var bad = [
            Bad(what: "a value that is not JSON", key: instance("unreadable-1"), value: Data("this is not JSON {\"v\":1".utf8)),
            Bad(what: "a command with \"v\":2", key: instance("unreadable-2"), value: JSON.object(v2).encoded()),
            Bad(what: "a command without reply_to", key: instance("unreadable-3"), value: JSON.object(noReply).encoded()),
        ]
        for i in bad.indices {
            bad[i].offset = try await write(bad[i].value, key: bad[i].key, partition: p, headers: [marker])
        }
        let good = try await send(instance("unreadable-good"), input: ["op": "echo", "value": "after the bad ones"], partition: p)
        let collected = try await collect([good])
        var problems = completed(good, in: collected, output: echoed(good, value: "after the bad ones"))
        // Committed past the good command, so past the bad ones before it: their dead letters are written.
        try await settle(after: [good])
        let letters = probe.deadLetters
        for b in bad {
            let at = "\(b.what) (\(commandTopic)[\(p)]@\(b.offset))"
            let placed = letters.first {
                $0.header(WireHeaders.deadLetterTopic).map { String(decoding: $0, as: UTF8.self) } == commandTopic
                    && $0.header(WireHeaders.deadLetterPartition).map { String(decoding: $0, as: UTF8.self) } == String(p)
                    && $0.header(WireHeaders.deadLetterOffset).map { String(decoding: $0, as: UTF8.self) } == String(b.offset)
            }
            guard let letter = placed ?? letters.first(where: { $0.keyString == b.key && $0.value == b.value }) else {
                problems.append("\(at) is not on \(names.deadletter)")
                continue
            }
            if placed == nil {
                problems.append(
                    "the dead letter of \(at) does not say where it came from: \(WireHeaders.deadLetterTopic), \(WireHeaders.deadLetterPartition) and \(WireHeaders.deadLetterOffset) must be \(commandTopic), \(p) and \(b.offset)"
                )
            }
            let reason = letter.header(WireHeaders.deadLetterReason).map { String(decoding: $0, as: UTF8.self) } ?? ""
            if reason.trimmingCharacters(in: .whitespaces).isEmpty { problems.append("the dead letter of \(at) has no \(WireHeaders.deadLetterReason) header") }
            if letter.keyString != b.key { problems.append("the dead letter of \(at) is keyed \(quoted(letter.keyString)), the record was keyed \(quoted(b.key))") }
            if letter.value != b.value { problems.append("the dead letter of \(at) does not carry the record's value as it was (\(letter.value?.count ?? 0) bytes, not \(b.value.count))") }
            if letter.header(marker.key) != marker.value { problems.append("the dead letter of \(at) lost the record's headers (\(marker.key) is missing)") }
        }
        for b in bad where !probe.answers(for: b.key).isEmpty {
            problems.append("\(b.what) was answered on \(names.events); it must only be dead-lettered")
        }
        try check(problems)
        return []
    }

    func oversized() async throws -> [String] {
        let p = partition(10)
        // Over 256 KiB, and over a mebibyte (more than a broker takes by default: a worker that tries to send it
        // gets an error from its producer, and must not retry it forever).
        let over = try await send(instance("oversized-1"), input: ["op": "output_bytes", "bytes": 300_000], partition: p)
        let huge = try await send(instance("oversized-2"), input: ["op": "output_bytes", "bytes": 1_500_000], partition: p)
        // Under the limit (the answer is about 200 KB): it is sent as it is.
        let under = try await send(instance("oversized-3"), input: ["op": "output_bytes", "bytes": 200_000], partition: p)
        let collected = try await collect([over, huge, under])
        var problems: [String] = []
        for command in [over, huge] {
            let (a, found) = answer(to: command, in: collected)
            problems += found
            guard let r = a?.result, found.isEmpty else { continue }
            if r.kind != .stepFailed || r.retryable != false {
                let size = a?.message.value?.count ?? 0
                problems.append(
                    "\(command.described) (an output of \(command.input["bytes"]?.intValue ?? 0) bytes) was answered with '\(r.kind.rawValue)'\(r.kind == .stepFailed ? " retryable \(r.retryable.map(String.init) ?? "absent (true)")" : "") in a record of \(size) bytes; expected step.failed with retryable false"
                )
            } else if (r.error ?? "").isEmpty {
                problems.append("the step.failed for \(command.described) has no error text")
            }
        }
        let (a, found) = answer(to: under, in: collected)
        problems += found
        if let r = a?.result, found.isEmpty {
            let data = r.output?["data"]?.stringValue
            if r.kind != .stepCompleted {
                problems.append("\(under.described) (an output of 200000 bytes, under the limit) was answered with '\(r.kind.rawValue)' (\(r.error ?? "")); expected step.completed")
            } else if data?.utf8.count != 200_000 || data?.utf8.allSatisfy({ $0 == UInt8(ascii: "x") }) != true {
                problems.append("the output of \(under.described) is not {\"data\": 200000 times \"x\"}: \(short(r.output))")
            }
        }
        try check(problems)
        return []
    }

    func deadline() async throws -> [String] {
        let p = partition(11)
        let late = try await send(instance("deadline-late"), input: ["op": "echo", "value": "too late"], deadline: Self.now() - 10_000, partition: p)
        let good = try await send(instance("deadline-good"), input: ["op": "echo", "value": "in time"], partition: p)
        let collected = try await collect([good])
        var problems = completed(good, in: collected, output: echoed(good, value: "in time"))
        try await settle(after: [late, good])
        if !probe.answers(for: late.instanceID).isEmpty {
            problems.append("\(late.described), 10 s past its deadline, was answered: a worker must skip it (commit it, send nothing)")
        }
        try check(problems)
        return []
    }

    func crash() async throws -> [String] {
        let p = partition(12)
        let ms = configuration.sleep.inMilliseconds
        let slow = try await send(instance("crash"), input: ["op": "sleep", "ms": .number(Double(ms)), "value": "slept"], partition: p)
        let written = ContinuousClock.now
        // Behind it on its partition: a worker that runs commands side by side answers this one while the sleep
        // runs, which shows it has the sleep command. One that runs a command at a time does not: then the kill
        // comes a little later.
        let behind = try await send(instance("crash-behind"), input: ["op": "echo", "value": "behind the sleep"], partition: p)
        let wait = min(Duration.seconds(3), configuration.sleep / 2)
        var running = false
        while ContinuousClock.now - written < wait {
            if !probe.answers(for: behind.instanceID).isEmpty {
                running = true
                break
            }
            try checkWorker()
            try await Task.sleep(for: .milliseconds(20))
        }
        let elapsed = ContinuousClock.now - written
        if let early = probe.answers(for: slow.instanceID).first {
            throw ConformanceFailure(
                "the sleep command (\(ms) ms) was answered \(elapsed.inMilliseconds) ms after it was written (at \(early.message.partition)@\(early.message.offset)): the handler did not sleep, so there was nothing to kill"
            )
        }
        let committed = try await probe.committed([p])[p] ?? -1
        if committed > slow.offset {
            throw ConformanceFailure(
                "the pool's group committed past \(slow.described) (committed offset \(committed)) before answering it: a worker that crashes now loses the command")
        }
        await worker.kill9()
        let killed = ContinuousClock.now
        try worker.start()
        let collected = try await collect([slow], timeout: configuration.joinTimeout + configuration.sleep + configuration.answerTimeout)
        var problems = completed(slow, in: collected, output: echoed(slow, value: "slept"))
        if problems.count == 1, problems[0].hasPrefix("no answer") {
            problems.append("(a killed member holds its partitions until its session times out: is the worker's session timeout much longer than \(configuration.joinTimeout)?)")
        }
        try check(problems)
        let how = running ? "it had answered the command behind the sleep, so it was running the sleep" : "it had not answered the command behind the sleep: it may run one command at a time"
        return [
            "killed (SIGKILL) \(elapsed.inMilliseconds) ms after the sleep command was written (\(how)); the restarted worker answered it \(String(format: "%.1f", Double((ContinuousClock.now - killed).inMilliseconds) / 1000)) s after the kill"
        ]
    }

    func commits() async throws -> [String] {
        let last = written.withLock { $0 }
        let partitions = last.keys.sorted()
        let deadline = ContinuousClock.now + configuration.answerTimeout
        while true {
            let committed = try await probe.committed(partitions)
            let behind = partitions.filter { (committed[$0] ?? -1) <= last[$0]! }
            if behind.isEmpty { return [] }
            try checkWorker()
            guard ContinuousClock.now < deadline else {
                throw ConformanceFailure(
                    problems: behind.map { p in
                        let c = committed[p] ?? -1
                        return "\(commandTopic)[\(p)]: the group committed \(c < 0 ? "nothing" : "offset \(c)"), the last command is at \(last[p]!) (\(last[p]! + 1 - max(0, c)) not committed within \(configuration.answerTimeout))"
                    })
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    // MARK: Expectations

    /// The problems with `command`'s answer, which must be step.completed (or compensation.completed) with `output`.
    func completed(_ command: SentCommand, in collected: Collected, output: JSON) -> [String] {
        let (a, found) = answer(to: command, in: collected)
        guard let r = a?.result, found.isEmpty else { return found }
        if r.kind != .stepCompleted {
            return ["the answer to \(command.described) is '\(r.kind.rawValue)'\(r.error.map { " (\($0))" } ?? ""); expected step.completed"]
        }
        if r.output != output { return ["the answer to \(command.described) has output \(short(r.output)); expected \(short(output))"] }
        return []
    }

    /// The problems with `command`'s answer, which must be step.failed with `error` and `retryable` (absent counts as true).
    func failed(_ command: SentCommand, in collected: Collected, error: String, retryable: Bool) -> [String] {
        let (a, found) = answer(to: command, in: collected)
        guard let r = a?.result, found.isEmpty else { return found }
        var problems: [String] = []
        if r.kind != .stepFailed { return ["the answer to \(command.described) is '\(r.kind.rawValue)'; expected step.failed"] }
        if r.error != error { problems.append("the answer to \(command.described) has error \(quoted(r.error)); the handler's was \(quoted(error))") }
        if (r.retryable ?? true) != retryable {
            problems.append("the answer to \(command.described) has retryable \(r.retryable.map(String.init) ?? "absent (true)"); the handler's was \(retryable)")
        }
        return problems
    }

    func short(_ json: JSON?) -> String {
        guard let json else { return "absent" }
        let text = json.jsonText
        return text.utf8.count <= 200 ? text : "\(text.prefix(160))... (\(text.utf8.count) bytes)"
    }

    func quoted(_ text: String?) -> String { text.map { "\"\($0)\"" } ?? "absent" }
}

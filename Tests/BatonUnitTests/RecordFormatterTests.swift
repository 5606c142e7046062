import BatonClient
import BatonCore
import BatonKafka
import BatonOperatorTools
import BatonRuntime
import BatonWire
import Foundation
import Testing

/// `baton tail`'s decoding and formatting of every kind of record, without a broker.
@Suite("TailWatch: records decoded for people (baton tail)")
struct TailWatchRecordFormatterTests {
    let names = TopicNames(namespace: "ns")
    let formatter = RecordFormatter()
    /// 2026-11-25T10:00:00.123Z
    let at: Int64 = 1_795_600_800_123

    func message(_ topic: String, _ value: Data?, key: String? = "order-17", headers: [KafkaHeader] = [], partition: Int32 = 7, offset: Int64 = 42) -> KafkaMessage {
        KafkaMessage(topic: topic, partition: partition, offset: offset, key: key.map { Data($0.utf8) }, value: value, headers: headers, timestamp: at)
    }

    func object(_ text: String) throws -> [String: JSON] {
        try #require(JSON.parse(Data(text.utf8)).objectValue)
    }

    @Test func timesAreISO8601InUTCWithMilliseconds() {
        #expect(RecordFormatter.time(at) == "2026-11-25T10:00:00.123Z")
        #expect(RecordFormatter.time(0) == "1970-01-01T00:00:00.000Z")
        #expect(RecordFormatter.time(-1) == "1969-12-31T23:59:59.999Z")
    }

    @Test func aCompletedStepShowsItsStepAttemptAndOutputOnOneLineAndInJSON() throws {
        let result = ResultMessage(kind: .stepCompleted, instanceID: "order-17", step: "charge", item: nil, attempt: 2, output: ["payment_id": "pay-9"], idempotencyKey: "order-17/charge")
        let record = formatter.decode(message(names.events, Wire.encode(result)), from: .events)
        #expect(record.kind == "step.completed")
        #expect(record.instanceID == "order-17")
        #expect(
            formatter.line(record)
                == #"2026-11-25T10:00:00.123Z  7@42  step.completed  order-17  step=charge  attempt=2  output={"payment_id":"pay-9"}  output_bytes=22"#)
        let json = try object(formatter.jsonLine(record))
        #expect(json["time"] == "2026-11-25T10:00:00.123Z")
        #expect(json["timestamp"]?.intValue == Int(at))
        #expect(json["topic"] == "ns.events" && json["partition"] == 7 && json["offset"] == 42 && json["key"] == "order-17")
        #expect(json["kind"] == "step.completed" && json["instance_id"] == "order-17" && json["step"] == "charge" && json["attempt"] == 2)
        #expect(json["output"] == ["payment_id": "pay-9"])
        // The decoded record, whole.
        #expect(json["record"]?["idempotency_key"] == "order-17/charge")
    }

    @Test func aFailedStepShowsItsErrorQuotedAndWhetherItIsRetried() {
        let result = ResultMessage(kind: .stepFailed, instanceID: "order-17", step: "charge", item: 3, attempt: 1, error: "card declined", retryable: false, idempotencyKey: nil)
        let line = formatter.line(formatter.decode(message(names.events, Wire.encode(result)), from: .events))
        #expect(line.hasSuffix(#"step.failed  order-17  step=charge  item=3  attempt=1  error="card declined"  retryable=false"#), "\(line)")
    }

    @Test func aLongInputIsCutInTheLineButWholeInTheRecord() throws {
        let input: JSON = ["note": .string(String(repeating: "x", count: 200))]
        let start = StartMessage(instanceID: "order-17", workflowID: "order_fulfillment", version: 2, input: input, sentAt: at, requestID: "r-1")
        let record = formatter.decode(message(names.events, Wire.encode(start)), from: .events)
        let line = formatter.line(record)
        #expect(line.contains(#"start  order-17  workflow_id=order_fulfillment  version=2  input={"note":"xxxx"#), "\(line)")
        #expect(line.contains(#"xxx...  request_id=r-1"#), "\(line)")
        let json = try object(formatter.jsonLine(record))
        #expect(json["input"]?.stringValue?.hasSuffix("...") == true)
        #expect(json["record"]?["input"] == input)
    }

    @Test func whatACoordinatorWouldRefuseIsUndecodableWithItsReasonAndDoesNotThrow() throws {
        let zero = #"{"v":1,"kind":"step.completed","instance_id":"order-17","step":"charge","attempt":0}"#
        let refused = formatter.decode(message(names.events, Data(zero.utf8)), from: .events)
        #expect(refused.kind == "undecodable")
        #expect(refused.undecodable?.contains("field 'attempt' is 0") == true, "\(refused)")
        #expect(formatter.line(refused).contains("undecodable  order-17  reason=\"field 'attempt' is 0"), "\(formatter.line(refused))")

        let garbage = formatter.decode(message(names.events, Data("not json".utf8), headers: Wire.headers(.start)), from: .events)
        #expect(garbage.kind == "undecodable")
        #expect(garbage.undecodable?.hasPrefix("not a JSON object") == true)
        #expect(garbage["header_kind"] == "start")
        let json = try object(formatter.jsonLine(garbage))
        #expect(json["record"] == "not json")
        #expect(json["undecodable"]?.stringValue?.hasPrefix("not a JSON object") == true)

        // A result on a command topic is not a command.
        let result = ResultMessage(kind: .stepCompleted, instanceID: "o", step: "s", item: nil, attempt: 1, idempotencyKey: nil)
        let misplaced = formatter.decode(message(names.commands("svc"), Wire.encode(result)), from: .commands(pool: "svc"))
        #expect(misplaced.undecodable == "a 'step.completed' record does not belong on a command topic")
    }

    @Test func aCommandShowsItsWorkflowStepAttemptPoolTimeoutAndStartDeadline() throws {
        let workflow = try DefinitionLoader.load(Data("workflow_id: w\nsteps: [{ id: charge, type: svc, worker: payments.charge }]".utf8))
        let dispatched = Saga.start(workflow, instanceID: "order-17", input: ["amount": 42], now: at).effects.compactMap { e -> StepCommand? in
            if case .dispatch(let c) = e { c } else { nil }
        }
        let command = CommandMessage(try #require(dispatched.first), replyTo: ReplyTo(topic: names.events, partition: 7))
        let line = formatter.line(formatter.decode(message(names.commands("payments.charge"), Wire.encode(command)), from: .commands(pool: "payments.charge")))
        #expect(
            line.hasPrefix(
                #"2026-11-25T10:00:00.123Z  7@42  step.command  order-17  workflow_id=w  version=1  step=charge  attempt=1  pool=payments.charge  input={"amount":42}  timeout_ms=1800000  reply_to=ns.events[7]"#
            ), "\(line)")
        // With a queue timeout, the time by which a worker must start it.
        let queued = try DefinitionLoader.load(Data("workflow_id: w\nsteps: [{ id: charge, type: svc, queue_timeout: 2m }]".utf8))
        let first = try #require(Saga.start(queued, instanceID: "order-18", input: [:], now: at).effects.compactMap { e -> StepCommand? in
            if case .dispatch(let c) = e { c } else { nil }
        }.first)
        let queuedLine = formatter.line(formatter.decode(message(names.commands("svc"), Wire.encode(CommandMessage(first, replyTo: ReplyTo(topic: names.events, partition: 7)))), from: .commands(pool: "svc")))
        #expect(queuedLine.contains("start_by=2026-11-25T10:02:00.123Z"), "\(queuedLine)")
    }

    @Test func aStateSnapshotShowsStatusProgressAndWhereItCameFrom() throws {
        let workflow = try DefinitionLoader.load(Data("workflow_id: w\non_failure: { then: suspend }\nsteps: [{ id: a, type: svc }, { id: b, type: svc, depends_on: [a] }]".utf8))
        var state = Saga.start(workflow, instanceID: "order-17", input: [:], now: at).state
        state = Saga.apply(workflow, to: state, event: .stepCompleted(step: "a", item: nil, attempt: 1, output: [:]), now: at + 10).state
        let headers = [KafkaHeader(key: WireHeaders.eventsOffset, string: "12"), KafkaHeader(key: WireHeaders.coordinator, string: "host/1")]
        let running = formatter.decode(message(names.state, StateCodec.encodeSnapshot(state), headers: headers), from: .state)
        #expect(
            formatter.line(running)
                == #"2026-11-25T10:00:00.123Z  7@42  state  order-17  workflow_id=w  version=1  status=running  steps="1/2 done"  running=#2  events_offset=12  coordinator=host/1"#)
        #expect(running.record?["instanceID"] == "order-17")
        state = Saga.apply(workflow, to: state, event: .stepFailed(step: "b", item: nil, attempt: 1, error: "boom", retryable: false), now: at + 20).state
        let suspended = formatter.decode(message(names.state, StateCodec.encodeSnapshot(state)), from: .state)
        #expect(suspended["status"] == "suspended")
        #expect(suspended["failed_step"] == "b")
        #expect(suspended["reason"]?.stringValue?.contains("boom") == true)

        let tombstone = formatter.decode(message(names.state, nil), from: .state)
        #expect(tombstone.kind == "tombstone" && tombstone.instanceID == "order-17")
        #expect(formatter.decode(message(names.state, Data("{}".utf8)), from: .state).undecodable == "not a Baton state record (bad header)")
    }

    @Test func alertsTasksNotificationsOutputsAndDefinitionsShowWhatMatters() throws {
        let alert = AlertRecord(alert: AlertMessage(severity: .critical, instanceID: nil, workflowID: nil, step: nil, message: "cannot commit", partition: 3), at: at)
        #expect(formatter.line(formatter.decode(message(names.alerts, Wire.encode(alert), key: "coordinator/3"), from: .alerts)).hasSuffix(
            #"alert  coordinator/3  severity=critical  events_partition=3  message="cannot commit""#))

        let task = HumanTask(
            taskID: "loan-3/approve/1", instanceID: "loan-3", workflowID: "loan", step: "approve", attempt: 1, assignee: "role:credit_manager", title: "Approve",
            input: [:], createdAt: at, dueAt: at + 1000, claimedBy: "carol", history: [TaskActivity(.claimed, at: at, by: "carol", to: "carol")])
        let taskRecord = TaskRecord(taskID: task.taskID, status: .open, task: task, decidedBy: nil, partition: 7, at: at)
        let taskLine = formatter.line(formatter.decode(message(names.tasks, Wire.encode(taskRecord), key: task.taskID), from: .tasks))
        #expect(taskLine.hasSuffix(
            #"task  loan-3  task_id=loan-3/approve/1  status=open  step=approve  attempt=1  assignee=role:credit_manager  claimed_by=carol  last="claimed by carol"  partition=7"#),
            "\(taskLine)")

        let notification = NotificationRecord(notification: NotificationMessage(recipient: "role:credit_manager", subject: "Approve", instanceID: "loan-3", taskID: "loan-3/approve/1"), at: at)
        #expect(formatter.line(formatter.decode(message(names.notifications, Wire.encode(notification)), from: .notifications)).hasSuffix(
            "notification  loan-3  recipient=role:credit_manager  subject=Approve  task_id=loan-3/approve/1"))

        let output = OutputRecord(instanceID: "order-17", step: "reserve", item: 0, attempt: 1, output: ["reservation_id": "res-1"])
        #expect(formatter.line(formatter.decode(message(names.outputs, Wire.encode(output), key: output.key), from: .outputs)).hasSuffix(
            #"output  order-17  step=reserve  item=0  attempt=1  output={"reservation_id":"res-1"}  output_bytes=26"#))
        #expect(formatter.decode(message(names.outputs, nil, key: output.key), from: .outputs).instanceID == "order-17")

        let definition = DefinitionRecord(workflowID: "w", version: 3, document: "workflow_id: w", registeredAt: at)
        #expect(formatter.line(formatter.decode(message(names.definitions, Wire.encode(definition), key: "w@3"), from: .definitions)).hasSuffix(
            "definition  w@3  workflow_id=w  version=3  document_bytes=14  registered_at=2026-11-25T10:00:00.123Z"))
    }

    @Test func aDeadLetterShowsWhyWhereFromAndWhatItWas() throws {
        let refused = message(names.events, Data(#"{"v":1,"kind":"step.completed","instance_id":"order-17","step":"charge"}"#.utf8), headers: Wire.headers(.stepCompleted), partition: 4, offset: 99)
        let letter = deadLetterRecord(refused, code: .unreadable, reason: "field 'attempt' is missing", topic: names.deadletter)
        let record = formatter.decode(message(names.deadletter, letter.value, key: "order-17", headers: letter.headers, partition: 0, offset: 5), from: .deadletter)
        #expect(record.kind == "deadletter")
        #expect(record.instanceID == "order-17")
        #expect(
            formatter.line(record)
                == #"2026-11-25T10:00:00.123Z  0@5  deadletter  order-17  reason="field 'attempt' is missing"  code=unreadable  origin=ns.events[4]@99  original_kind=step.completed  size=72"#)
        let json = try object(formatter.jsonLine(record))
        #expect(json["reason"] == "field 'attempt' is missing" && json["code"] == "unreadable" && json["origin"] == "ns.events[4]@99")
        #expect(json["record"]?["step"] == "charge")

        // Not JSON at all: still shown, with its reason and origin.
        let bytes = message(names.events, Data([0xFF, 0x00]), key: nil, partition: 1, offset: 2)
        let binary = deadLetterRecord(bytes, code: .unreadable, reason: "not a JSON object", topic: names.deadletter)
        let shown = formatter.decode(message(names.deadletter, binary.value, key: nil, headers: binary.headers), from: .deadletter)
        #expect(shown.kind == "deadletter" && shown.instanceID == nil && shown["origin"] == "ns.events[1]@2")
    }

    @Test func topicsAreNamedAsTheCommandLineNamesThem() throws {
        #expect(try TailTopic.named("events", pool: nil).name(in: names) == "ns.events")
        #expect(try TailTopic.named("commands", pool: "payments.charge").name(in: names) == "ns.commands.payments.charge")
        #expect(try TailTopic.named("deadletter", pool: nil).name(in: names) == "ns.deadletter")
        #expect(throws: ClientError.self) { try TailTopic.named("commands", pool: nil) }
        #expect(throws: ClientError.self) { try TailTopic.named("state", pool: "x") }
        do { _ = try TailTopic.named("event", pool: nil) } catch {
            #expect(error.description == "no engine topic 'event'; known: events, commands, state, outputs, tasks, alerts, notifications, definitions, deadletter")
        }
    }
}

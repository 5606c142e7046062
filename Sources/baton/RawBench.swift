import BatonCore
import BatonKafka
import BatonRuntime
import BatonWire
import Foundation
import Logging

/// `baton bench --raw`: the records that N instances make through the engine (starts, commands, results,
/// snapshots, outputs: made with the saga core and the engine's encodings), written through the same broker in
/// the engine's pattern (starts and results by plain producers; snapshots, outputs and commands in
/// transactions, one transactional producer per events partition) and read back `read_committed` where the
/// engine reads them, with no engine logic in between: how fast the broker alone takes this workload, the bound
/// the engine's figures are measured against.
struct RawBench {
    let names: TopicNames
    let client: KafkaClientConfiguration
    let workflow: Workflow
    let instances: Int
    let partitions: Int
    let logger: Logger
    /// Instances per transaction (the coordinator applies a few hundred events per transaction under load).
    var instancesPerTransaction = 100

    struct Records {
        var plain: [ProducerRecord] = []
        var transactional: [ProducerRecord] = []
        var total: Int { plain.count + transactional.count }
    }

    /// The records one instance makes, each step completed as an example worker completes it.
    func records(of id: String, now: Timestamp) -> Records {
        var out = Records()
        let key = Data(id.utf8)
        let partition = KafkaPartitioner.partition(forKey: id, partitionCount: partitions)
        let start = StartMessage(instanceID: id, workflowID: workflow.id, version: workflow.version, input: ["order_id": .string(id)], sentAt: now)
        out.plain.append(ProducerRecord(topic: names.events, partition: partition, key: key, value: Wire.encode(start), headers: Wire.headers(.start)))
        let stateHeaders = [KafkaHeader(key: WireHeaders.eventsOffset, string: "1000000"), KafkaHeader(key: WireHeaders.coordinator, string: "raw-bench")]
        var transition = Saga.start(workflow, instanceID: id, input: start.input, now: now)
        var before: InstanceState?
        var pending: [StepCommand] = []
        while true {
            let state = transition.state
            out.transactional.append(
                ProducerRecord(topic: names.state, partition: partition, key: key, value: StateCodec.encodeSnapshot(state), headers: stateHeaders))
            for o in state.outputsAdded(since: before) {
                let record = OutputRecord(instanceID: id, step: workflow.steps[o.step].id, item: o.item, attempt: o.attempt, output: o.output)
                out.transactional.append(
                    ProducerRecord(
                        topic: names.outputs, partition: partition, key: Data(record.key.utf8), value: Wire.encode(record),
                        headers: stateHeaders + Wire.headers(.output)))
            }
            for effect in transition.effects {
                guard case .dispatch(let command) = effect else { continue }
                let message = CommandMessage(command, replyTo: ReplyTo(topic: names.events, partition: partition))
                out.transactional.append(
                    ProducerRecord(topic: names.commands(command.pool), key: key, value: Wire.encode(message), headers: Wire.headers(message.kind)))
                pending.append(command)
            }
            guard !pending.isEmpty else { return out }
            let command = pending.removeFirst()
            let output: JSON = ["done": .string(command.step), "id": .string("x-\(id.utf8.count)")]
            let result = ResultMessage.completed(CommandMessage(command, replyTo: ReplyTo(topic: names.events, partition: partition)), output: output)
            out.plain.append(ProducerRecord(topic: names.events, partition: partition, key: key, value: Wire.encode(result), headers: Wire.headers(result.kind)))
            before = state
            transition = Saga.apply(workflow, to: state, event: .stepCompleted(step: command.step, item: command.item, attempt: command.attempt, output: output), now: now)
        }
    }

    struct Report {
        var records: Int
        var bytes: Int
        var seconds: Double
    }

    func run() async throws -> Report {
        let now = nowMillis()
        // Made before the clock starts: the engine's CPU is not what this measures.
        var byPartition = Array(repeating: [Records](), count: partitions)
        var expected = 0
        var bytes = 0
        for i in 0..<instances {
            let id = "r\(i)-\(UUID().uuidString.prefix(8))"
            let r = records(of: id, now: now)
            byPartition[Int(KafkaPartitioner.partition(forKey: id, partitionCount: partitions))].append(r)
            expected += r.plain.count + r.transactional.filter { $0.topic != names.outputs }.count
            bytes += (r.plain + r.transactional).reduce(0) { $0 + ($1.value?.count ?? 0) + ($1.key?.count ?? 0) }
        }
        let total = byPartition.joined().reduce(0) { $0 + $1.total }
        let pools = Set(byPartition.joined().flatMap { $0.transactional.map(\.topic) }.filter { $0.hasPrefix(names.commands("")) })

        // The engine's readers: the coordinators read the events, the workers the commands, watchers the state.
        var readerConfiguration = KafkaConsumerConfiguration(client: client, groupID: nil)
        readerConfiguration.isolationLevel = .readCommitted
        let reader = try KafkaConsumer(configuration: readerConfiguration, logger: logger)
        let metadata = try await reader.metadata()
        var assigned: [TopicPartitionOffset] = []
        for topic in [names.events, names.state] + pools.sorted() {
            let count = metadata.topics[topic]?.partitionCount ?? 0
            assigned += (0..<count).map { TopicPartitionOffset(TopicPartition(topic, Int32($0)), offset: TopicPartitionOffset.end) }
        }
        try reader.assign(assigned)
        // Wait for the assignment to take effect before writing, so that nothing written is missed.
        _ = try await reader.poll(maxEvents: 1, timeout: .milliseconds(500))

        let plainProducer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: client), logger: logger)
        var transactional: [KafkaProducer] = []
        for p in 0..<partitions {
            var configuration = KafkaProducerConfiguration(client: client)
            configuration.transactionalID = "\(names.namespace).raw-bench.\(p)"
            let producer = try KafkaProducer(configuration: configuration, logger: logger)
            try await producer.initTransactions()
            transactional.append(producer)
        }
        let clock = ContinuousClock()
        let began = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [expected] in
                var read = 0
                while read < expected {
                    let events = try await reader.poll(maxEvents: 10_000, timeout: .milliseconds(100))
                    read += events.count { if case .message = $0 { true } else { false } }
                    if clock.now - began > .seconds(600) { throw CLIFailure("the raw bench read \(read) of \(expected) records in 600 s") }
                }
            }
            for p in 0..<partitions {
                let producer = transactional[p]
                let batches = byPartition[p]
                group.addTask { [instancesPerTransaction] in
                    var i = 0
                    while i < batches.count {
                        let chunk = batches[i..<min(batches.count, i + instancesPerTransaction)]
                        // The starts and results come from clients and workers, outside any transaction.
                        for r in chunk { for record in r.plain { try await plainProducer.enqueue(record) } }
                        try producer.beginTransaction()
                        for r in chunk { for record in r.transactional { try await producer.enqueue(record) } }
                        try await producer.commitTransaction()
                        i += instancesPerTransaction
                    }
                }
            }
            try await group.waitForAll()
        }
        try await plainProducer.flush()
        let elapsed = clock.now - began
        await reader.close()
        await plainProducer.close()
        for producer in transactional { await producer.close() }
        return Report(records: total, bytes: bytes, seconds: elapsed.inSeconds)
    }
}

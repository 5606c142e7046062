import BatonCore
import BatonKafka
import BatonWire
import Foundation
import Logging
import Synchronization

/// Every registered workflow definition, read from the definitions topic and kept up to date.
public final class DefinitionRegistry: Sendable {
    let consumer: KafkaConsumer
    let names: TopicNames
    let logger: Logger
    struct Known {
        /// The registrations read, decided by the rule every reader shares (first per version wins).
        var log = DefinitionLog()
        /// The winning workflow of each version (`<id>@<version>`) whose document loads.
        var workflows: [String: Workflow] = [:]
        var latest: [String: Int] = [:]
        var atEnd: [Int32: Bool] = [:]
        /// Counts the definitions added (`generation`).
        var added = 0
    }
    let known = Mutex(Known())

    public init(client: KafkaClientConfiguration, names: TopicNames, logger: Logger) async throws {
        self.names = names
        self.logger = logger
        var configuration = KafkaConsumerConfiguration(client: client, groupID: nil)
        configuration.reportPartitionEOF = true
        // Definitions change rarely, and a start for one not seen yet makes the coordinator catch up first.
        configuration.client.fetchWait = max(client.fetchWait, .milliseconds(20))
        consumer = try KafkaConsumer(configuration: configuration, logger: logger)
        let metadata = try await consumer.metadata()
        guard let topic = metadata.topics[names.definitions] else {
            throw KafkaError(code: .unknownTopicOrPartition, message: "topic \(names.definitions) does not exist; run `baton topics apply` first")
        }
        let partitions = (0..<Int32(topic.partitionCount)).map { TopicPartitionOffset(names.definitions, $0, offset: TopicPartitionOffset.beginning) }
        try consumer.assign(partitions)
        known.withLock { k in for p in partitions { k.atEnd[p.topicPartition.partition] = false } }
        try await catchUp(within: .seconds(30))
    }

    /// Reads what is new; returns when every partition has been read to its end, or after `within`.
    public func catchUp(within timeout: Duration = .zero) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        repeat {
            let events = try await consumer.poll(maxEvents: 1000, timeout: timeout == .zero ? .zero : .milliseconds(50))
            for event in events {
                switch event {
                case .message(let m):
                    known.withLock { $0.atEnd[m.partition] = false }
                    apply(m)
                case .partitionEOF(let tp, _):
                    known.withLock { $0.atEnd[tp.partition] = true }
                default: break
                }
            }
            if known.withLock({ $0.atEnd.values.allSatisfy { $0 } }) { return }
        } while clock.now < deadline
    }

    /// Reads new definitions as they are registered, until cancelled: a coordinator runs this beside its
    /// partitions, so that a start for "the latest version" gets the one registered just before.
    public func follow() async {
        while !Task.isCancelled {
            do {
                for case .message(let m) in try await consumer.poll(maxEvents: 1000, timeout: .milliseconds(100)) { apply(m) }
            } catch {
                if Task.isCancelled { return }
                logger.error("reading definitions failed; trying again: \(error)")
                try? await Task.sleep(for: .seconds(1))  // cancelled: the loop ends
            }
        }
    }

    /// Reads one record of the definitions topic: the version's winner (`DefinitionLog`) is what runs.
    func apply(_ message: KafkaMessage) {
        known.withLock { k in
            let change: DefinitionLog.Change?
            do {
                change = try k.log.apply(key: message.keyString, value: message.value)
            } catch {
                logger.error("ignoring a bad definition record", metadata: ["offset": "\(message.partition)/\(message.offset)", "error": "\(error)"])
                return
            }
            guard let change else { return }
            if let winner = change.winner {
                do {
                    let record = winner.record
                    let workflow = try DefinitionLoader.load(Data(record.document.utf8), source: change.version, namespace: names.namespace)
                    guard workflow.id == record.workflowID, workflow.version == record.version else {
                        throw Wire.DecodeError("the record says \(change.version) but the document is \(workflow.id)@\(workflow.version)")
                    }
                    if k.workflows[change.version] != workflow { k.added += 1 }
                    k.workflows[change.version] = workflow
                } catch {
                    // The version's winner does not load: the version cannot run (a later registration does not replace it).
                    k.workflows[change.version] = nil
                    logger.error(
                        "the registered definition \(change.version) does not load; instances of it cannot run",
                        metadata: ["offset": "\(message.partition)/\(message.offset)", "error": "\(error)"])
                }
            } else {
                k.workflows[change.version] = nil
            }
            if let at = change.version.lastIndex(of: "@") {
                let id = String(change.version[..<at])
                k.latest[id] = k.log.latest(id).map(\.record.version)
            }
        }
    }

    /// The workflow at a version (the latest when nil).
    public func workflow(_ id: String, version: Int?) -> Workflow? {
        known.withLock { k in
            guard let v = version ?? k.latest[id] else { return nil }
            return k.workflows[DefinitionRecord.key(id, v)]
        }
    }

    /// Every registered workflow at every version, the latest version of each workflow id, and the generation
    /// they are of: taken together, so that a reader (`baton triggers`) sees one consistent set.
    public func snapshot() -> (workflows: [Workflow], latest: [String: Int], generation: Int) {
        known.withLock { k in (Array(k.workflows.values), k.latest, k.added) }
    }

    /// Grows by one for each definition read that was not known before: a reader that keeps the value it last
    /// acted on sees when something new was registered.
    public var generation: Int { known.withLock { $0.added } }

    public func close() async { await consumer.close() }
}

import CRdKafka
import Foundation
import Logging

public struct NewTopic: Sendable, Hashable {
    public var name: String
    public var partitions: Int
    /// -1 lets the broker choose its default replication factor.
    public var replicationFactor: Int
    public var configs: [String: String]
    public init(name: String, partitions: Int, replicationFactor: Int = -1, configs: [String: String] = [:]) {
        self.name = name
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.configs = configs
    }
}

/// A topic configuration entry as the broker describes it.
public struct TopicConfigEntry: Sendable, Hashable {
    public var value: String?
    public var isDefault: Bool
    public init(value: String?, isDefault: Bool = false) {
        self.value = value
        self.isDefault = isDefault
    }
}

/// Cluster administration: connectivity, topics and their configurations.
public final class KafkaAdmin: Sendable {
    let client: RDKafkaClient
    let requestTimeout: Duration

    public init(configuration: KafkaClientConfiguration, logger: Logger) throws {
        self.requestTimeout = configuration.requestTimeout
        var properties = configuration.properties
        properties.merge(configuration.additional) { $1 }
        self.client = try RDKafkaClient(
            kind: .producer, properties: properties, brokers: configuration.brokers, logger: logger, pollInBackground: true)
    }

    deinit { client.stopPolling() }

    /// Fails within `timeout` with an error naming the brokers when none of them answers.
    public func metadata(timeout: Duration? = nil) async throws -> ClusterMetadata {
        let client = self.client
        let timeout = timeout ?? requestTimeout
        return try await runBlocking { try client.metadata(timeout: timeout) }
    }

    /// Creates the topics; returns, per topic, nil when created or the broker's error (such as `topicAlreadyExists`).
    public func createTopics(_ topics: [NewTopic]) async throws -> [String: KafkaError?] {
        guard !topics.isEmpty else { return [:] }
        let handle = UncheckedHandle(client.handle)
        let timeout = requestTimeout
        let brokers = client.brokers
        let client = self.client
        return try await runBlocking {
            var errstr = [CChar](repeating: 0, count: 512)
            var newTopics: [OpaquePointer?] = []
            defer { for t in newTopics { rd_kafka_NewTopic_destroy(t) } }
            for topic in topics {
                guard let t = rd_kafka_NewTopic_new(topic.name, Int32(topic.partitions), Int32(topic.replicationFactor), &errstr, errstr.count) else {
                    throw KafkaError.client("topic \(topic.name): \(cString(errstr))")
                }
                newTopics.append(t)
                for (key, value) in topic.configs.sorted(by: { $0.key < $1.key }) {
                    let err = rd_kafka_NewTopic_set_config(t, key, value)
                    if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "topic \(topic.name) config \(key)") }
                }
            }
            let event = try Self.request(handle.pointer, RD_KAFKA_ADMIN_OP_CREATETOPICS, timeout: timeout, brokers: brokers, client: client) { options, queue in
                rd_kafka_CreateTopics(handle.pointer, &newTopics, newTopics.count, options, queue)
            }
            defer { rd_kafka_event_destroy(event) }
            var count = 0
            guard let result = rd_kafka_event_CreateTopics_result(event),
                let results = rd_kafka_CreateTopics_result_topics(result, &count)
            else { throw KafkaError.client("CreateTopics returned no result", code: .state) }
            var outcome: [String: KafkaError?] = [:]
            for i in 0..<count {
                let r = results[i]
                let name = String(cString: rd_kafka_topic_result_name(r))
                let err = rd_kafka_topic_result_error(r)
                if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    outcome[name] = .some(nil)
                } else {
                    let text = rd_kafka_topic_result_error_string(r).map { String(cString: $0) }
                    outcome[name] = KafkaError(err, context: "create topic \(name)\(text.map { " (\($0))" } ?? "")")
                }
            }
            return outcome
        }
    }

    /// The non-default configuration entries of each topic, as the broker reports them.
    public func describeTopicConfigs(_ names: [String]) async throws -> [String: [String: TopicConfigEntry]] {
        guard !names.isEmpty else { return [:] }
        let handle = UncheckedHandle(client.handle)
        let timeout = requestTimeout
        let brokers = client.brokers
        let client = self.client
        return try await runBlocking {
            var resources: [OpaquePointer?] = names.map { rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, $0) }
            defer { for r in resources { rd_kafka_ConfigResource_destroy(r) } }
            let event = try Self.request(handle.pointer, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, timeout: timeout, brokers: brokers, client: client) { options, queue in
                rd_kafka_DescribeConfigs(handle.pointer, &resources, resources.count, options, queue)
            }
            defer { rd_kafka_event_destroy(event) }
            var count = 0
            guard let result = rd_kafka_event_DescribeConfigs_result(event),
                let described = rd_kafka_DescribeConfigs_result_resources(result, &count)
            else { throw KafkaError.client("DescribeConfigs returned no result", code: .state) }
            var outcome: [String: [String: TopicConfigEntry]] = [:]
            for i in 0..<count {
                let resource = described[i]
                let name = String(cString: rd_kafka_ConfigResource_name(resource))
                let err = rd_kafka_ConfigResource_error(resource)
                if err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    throw KafkaError(err, context: "describe configs of \(name)")
                }
                var entryCount = 0
                var entries: [String: TopicConfigEntry] = [:]
                if let configs = rd_kafka_ConfigResource_configs(resource, &entryCount) {
                    for j in 0..<entryCount {
                        let entry = configs[j]
                        let key = String(cString: rd_kafka_ConfigEntry_name(entry))
                        entries[key] = TopicConfigEntry(
                            value: rd_kafka_ConfigEntry_value(entry).map { String(cString: $0) },
                            isDefault: rd_kafka_ConfigEntry_is_default(entry) != 0)
                    }
                }
                outcome[name] = entries
            }
            return outcome
        }
    }

    /// Each named topic's id (Kafka's topic UUID, base64) as the brokers describe it; a topic that does not
    /// exist, or whose id the broker does not report (older brokers), is absent. A topic deleted and created
    /// again under the same name gets a new id: how a process notices that the records it read are gone.
    public func topicIDs(_ names: [String]) async throws -> [String: String] {
        guard !names.isEmpty else { return [:] }
        let handle = UncheckedHandle(client.handle)
        let timeout = requestTimeout
        let brokers = client.brokers
        let client = self.client
        return try await runBlocking {
            let copies = names.map { strdup($0) }
            defer { for c in copies { free(c) } }
            var pointers: [UnsafePointer<CChar>?] = copies.map { UnsafePointer($0) }
            guard let collection = rd_kafka_TopicCollection_of_topic_names(&pointers, pointers.count) else {
                throw KafkaError.client("DescribeTopics: could not make the collection of \(names.count) topics", code: .state)
            }
            defer { rd_kafka_TopicCollection_destroy(collection) }
            let event = try Self.request(handle.pointer, RD_KAFKA_ADMIN_OP_DESCRIBETOPICS, timeout: timeout, brokers: brokers, client: client) { options, queue in
                rd_kafka_DescribeTopics(handle.pointer, collection, options, queue)
            }
            defer { rd_kafka_event_destroy(event) }
            var count = 0
            guard let result = rd_kafka_event_DescribeTopics_result(event),
                let described = rd_kafka_DescribeTopics_result_topics(result, &count)
            else { throw KafkaError.client("DescribeTopics returned no result", code: .state) }
            var ids: [String: String] = [:]
            let zero = String(repeating: "A", count: 22)  // the all-zero UUID: no id reported
            for i in 0..<count {
                guard let description = described[i], rd_kafka_TopicDescription_error(description) == nil,
                    let uuid = rd_kafka_TopicDescription_topic_id(description), let text = rd_kafka_Uuid_base64str(uuid)
                else { continue }
                let id = String(cString: text)
                if !id.isEmpty, id != zero { ids[String(cString: rd_kafka_TopicDescription_name(description))] = id }
            }
            return ids
        }
    }

    /// Runs one admin request and waits for its result event, with the request's error thrown.
    private static func request(
        _ handle: OpaquePointer, _ op: rd_kafka_admin_op_t, timeout: Duration, brokers: KafkaBrokers, client: RDKafkaClient,
        _ start: (OpaquePointer?, OpaquePointer?) -> Void
    ) throws -> OpaquePointer {
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(handle, op)
        defer { rd_kafka_AdminOptions_destroy(options) }
        var errstr = [CChar](repeating: 0, count: 512)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, Int32(timeout.milliseconds), &errstr, errstr.count)
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, Int32(timeout.milliseconds), &errstr, errstr.count)
        start(options, queue)
        // The request's own timeout bounds this wait; the extra second lets its timeout event arrive first.
        guard let event = rd_kafka_queue_poll(queue, Int32(timeout.milliseconds) + 1000) else {
            throw client.unreachable(RD_KAFKA_RESP_ERR__TIMED_OUT, timeout: timeout)
        }
        let err = rd_kafka_event_error(event)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            let text = rd_kafka_event_error_string(event).map { String(cString: $0) } ?? ""
            rd_kafka_event_destroy(event)
            if KafkaError.Code(err) == .timedOut || KafkaError.Code(err) == .transport {
                throw client.unreachable(err, timeout: timeout)
            }
            throw KafkaError(err, context: text)
        }
        return event
    }
}

/// librdkafka's version, such as "2.8.0".
public var librdkafkaVersion: String { String(cString: rd_kafka_version_str()) }

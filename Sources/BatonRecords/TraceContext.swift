import Tracing

// MARK: Traces across Kafka

/// Writes a trace context into a record's headers (W3C `traceparent` and `tracestate` with the OpenTelemetry
/// tracer); a key written again replaces the old value.
public struct KafkaHeadersInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [KafkaHeader]) {
        carrier.removeAll { $0.key == key }
        carrier.append(KafkaHeader(key: key, string: value))
    }
}

/// The W3C trace-context header, and what the engine does with a trace that is not sampled.
public enum TraceHeaders {
    public static let traceparent = "traceparent"

    /// The traceparent of a record, if it has one.
    public static func traceparent(of message: KafkaMessage) -> String? { message.header(traceparent).map { String(decoding: $0, as: UTF8.self) } }

    /// A trace its root did not sample (W3C flags `00`: nothing of it is recorded) gets no span; its context is
    /// passed on as it came, as this header. Nil when the trace is sampled, or there is none.
    public static func unsampled(_ traceparent: String?) -> KafkaHeader? {
        guard let traceparent, traceparent.hasSuffix("-00") else { return nil }
        return KafkaHeader(key: Self.traceparent, string: traceparent)
    }

    /// The trace headers of a record (`traceparent`, `tracestate`) as they came: what a process that does not
    /// trace passes on, so that the processes after it that do trace stay in the same trace.
    public static func passOn(_ message: KafkaMessage) -> [KafkaHeader] {
        message.headers.filter { $0.key == traceparent || $0.key == "tracestate" }
    }
}

/// Reads a trace context from a record's headers. Kafka header keys are case-sensitive: `traceparent`.
public struct KafkaHeadersExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [KafkaHeader]) -> String? {
        guard let data = carrier.last(where: { $0.key == key })?.value else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A trace context kept as the headers a tracer writes (kept in an instance's state, so that its steps join
/// one trace however long it runs).
public struct DictionaryInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

public struct DictionaryExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

extension Tracer {
    /// The context a record's headers carry, if they carry one.
    public func context(from headers: [KafkaHeader]) -> ServiceContext? {
        var context = ServiceContext.topLevel
        extract(headers, into: &context, using: KafkaHeadersExtractor())
        return context.isEmpty ? nil : context
    }

    /// The context kept in a dictionary (an instance's state), if any.
    public func context(from carrier: [String: String]?) -> ServiceContext? {
        guard let carrier, !carrier.isEmpty else { return nil }
        var context = ServiceContext.topLevel
        extract(carrier, into: &context, using: DictionaryExtractor())
        return context.isEmpty ? nil : context
    }

    /// A span's context as headers to keep.
    public func carrier(of context: ServiceContext) -> [String: String] {
        var carrier: [String: String] = [:]
        inject(context, into: &carrier, using: DictionaryInjector())
        return carrier
    }
}

extension Span {
    /// The attributes OpenTelemetry's messaging conventions give a Kafka record.
    public func kafka(_ topic: String, partition: Int32?, offset: Int64? = nil, operation: String) {
        updateAttributes { a in
            a["messaging.system"] = "kafka"
            a["messaging.destination.name"] = topic
            a["messaging.operation.type"] = operation
            if let partition { a["messaging.destination.partition.id"] = String(partition) }
            if let offset { a["messaging.kafka.offset"] = Int(offset) }
        }
    }
}

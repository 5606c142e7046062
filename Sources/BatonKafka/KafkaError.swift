import CRdKafka

/// An error from Kafka or from librdkafka, with what a caller needs to decide what to do next.
public struct KafkaError: Error, Sendable, CustomStringConvertible {
    /// librdkafka's error code (`rd_kafka_resp_err_t`): negative values are local, positive ones come from the broker.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        init(_ err: rd_kafka_resp_err_t) { self.rawValue = err.rawValue }

        public static let noError = Code(RD_KAFKA_RESP_ERR_NO_ERROR)
        public static let timedOut = Code(RD_KAFKA_RESP_ERR__TIMED_OUT)
        public static let transport = Code(RD_KAFKA_RESP_ERR__TRANSPORT)
        public static let allBrokersDown = Code(RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        public static let queueFull = Code(RD_KAFKA_RESP_ERR__QUEUE_FULL)
        public static let partitionEOF = Code(RD_KAFKA_RESP_ERR__PARTITION_EOF)
        public static let unknownTopicOrPartition = Code(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        public static let topicAlreadyExists = Code(RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
        public static let fenced = Code(RD_KAFKA_RESP_ERR__FENCED)
        public static let producerFenced = Code(RD_KAFKA_RESP_ERR_PRODUCER_FENCED)
        public static let invalidProducerEpoch = Code(RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
        public static let invalidArgument = Code(RD_KAFKA_RESP_ERR__INVALID_ARG)
        public static let invalidConfiguration = Code(RD_KAFKA_RESP_ERR__INVALID_ARG)
        public static let state = Code(RD_KAFKA_RESP_ERR__STATE)
        public static let destroyed = Code(RD_KAFKA_RESP_ERR__DESTROY)
        public static let fatal = Code(RD_KAFKA_RESP_ERR__FATAL)
        public static let assignmentLost = Code(RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST)
        public static let unknownMemberID = Code(RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID)
        public static let illegalGeneration = Code(RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION)
        public static let rebalanceInProgress = Code(RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS)
        public static let msgSizeTooLarge = Code(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)

        /// librdkafka's own name for the code, such as `_TIMED_OUT` or `UNKNOWN_TOPIC_OR_PART`.
        public var name: String { String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: rawValue))) }
        public var description: String { name }
    }

    public let code: Code
    public let message: String
    /// Trying the same operation again may succeed (a broker was down, a request timed out).
    public let isRetriable: Bool
    /// The client can no longer be used and must be recreated (for a transactional producer: it was fenced).
    public let isFatal: Bool
    /// A transactional producer must abort the current transaction before it can go on.
    public let transactionRequiresAbort: Bool
    public let file: String
    public let line: UInt

    public init(
        code: Code, message: String, isRetriable: Bool = false, isFatal: Bool = false,
        transactionRequiresAbort: Bool = false, file: String = #fileID, line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.isRetriable = isRetriable
        self.isFatal = isFatal
        self.transactionRequiresAbort = transactionRequiresAbort
        self.file = file
        self.line = line
    }

    /// An error from a plain `rd_kafka_resp_err_t`, classified by what librdkafka documents for the code.
    init(_ err: rd_kafka_resp_err_t, context: String? = nil, file: String = #fileID, line: UInt = #line) {
        let text = String(cString: rd_kafka_err2str(err))
        let code = Code(err)
        self.init(
            code: code,
            message: context.map { "\($0): \(text)" } ?? text,
            isRetriable: Self.retriableCodes.contains(code),
            isFatal: code == .fatal || code == .fenced || code == .producerFenced,
            file: file, line: line)
    }

    /// Takes ownership of an `rd_kafka_error_t` (as returned by the transactional API) and destroys it.
    init(consuming error: OpaquePointer, context: String? = nil, file: String = #fileID, line: UInt = #line) {
        defer { rd_kafka_error_destroy(error) }
        let text = String(cString: rd_kafka_error_string(error))
        self.init(
            code: Code(rd_kafka_error_code(error)),
            message: context.map { "\($0): \(text)" } ?? text,
            isRetriable: rd_kafka_error_is_retriable(error) != 0,
            isFatal: rd_kafka_error_is_fatal(error) != 0,
            transactionRequiresAbort: rd_kafka_error_txn_requires_abort(error) != 0,
            file: file, line: line)
    }

    static func client(_ message: String, code: Code = .invalidArgument, file: String = #fileID, line: UInt = #line) -> KafkaError {
        KafkaError(code: code, message: message, file: file, line: line)
    }

    static let retriableCodes: Set<Code> = [
        .timedOut, .transport, .allBrokersDown, .queueFull,
        Code(RD_KAFKA_RESP_ERR__RESOLVE), Code(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION),
        Code(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE), Code(RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT),
        Code(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS), Code(RD_KAFKA_RESP_ERR_NOT_COORDINATOR),
        Code(RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE), Code(RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS),
        Code(RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION), Code(RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS),
        .rebalanceInProgress,
    ]

    /// The broker (or librdkafka, before sending) refuses this one record, whatever is tried again: too large,
    /// malformed. Retrying the same record cannot help; the transaction that holds it must go without it.
    public var isRecordRefusal: Bool { Self.refusalCodes.contains(code) }

    static let refusalCodes: Set<Code> = [
        .msgSizeTooLarge, Code(RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE), Code(RD_KAFKA_RESP_ERR_INVALID_RECORD),
        Code(RD_KAFKA_RESP_ERR_INVALID_MSG), Code(RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP),
    ]

    public var description: String {
        var flags: [String] = []
        if isRetriable { flags.append("retriable") }
        if isFatal { flags.append("fatal") }
        if transactionRequiresAbort { flags.append("abort the transaction") }
        let suffix = flags.isEmpty ? "" : " (\(flags.joined(separator: ", ")))"
        return "Kafka error \(code.name): \(message)\(suffix)"
    }
}

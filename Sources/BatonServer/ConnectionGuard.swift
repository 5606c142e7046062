import BatonClient
import BatonCore
import BatonKafka
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import Synchronization

/// How long `baton serve` waits for a client, how large a request's head may be, and how many connections it
/// keeps open (docs/api.md, "Timeouts and limits").
public struct EdgeLimits: Sendable {
    /// A connection with no request in flight is closed after this (Hummingbird's own idle timeout). A response
    /// being written (a server-sent event stream included) is a request in flight.
    public var idleTimeout: Duration = .seconds(60)
    /// From a request's first byte until its head (request line and header fields) is complete; then 408.
    public var headerTimeout: Duration = .seconds(10)
    /// From a request's head until the last byte of its body; then 408.
    public var bodyTimeout: Duration = .seconds(30)
    /// Open connections at most; at the limit, the connection idle longest is closed to admit a new one, and
    /// when none is idle, the new one is refused (503).
    public var maxConnections = 10_000
    /// The request line (method, target, version) in bytes at most; more is a 414.
    public var maxRequestLine = 8 * 1024
    /// The whole head (request line and header fields) in bytes at most; more is a 431.
    public var maxHead = 32 * 1024

    public init() {}

    /// The limits with `maxConnections` lowered to leave `reserve` descriptors of `descriptors` for the rest
    /// of the process (Kafka clients, files); nil when they fit.
    public func fitting(descriptors: Int, reserve: Int = 256) -> EdgeLimits? {
        let room = max(1, descriptors - reserve)
        guard maxConnections > room else { return nil }
        var fitted = self
        fitted.maxConnections = room
        return fitted
    }
}

/// The open connections and which of them have no request in flight, oldest idle first: at the limit a new
/// connection is admitted by closing the one idle longest (so that `/healthz` and real users still get in during
/// a flood of idle connections), and refused when none is idle. A pure value; `ConnectionRegistry` locks it.
struct ConnectionTable<Connection> {
    enum Admission {
        case admitted(closing: Connection?)
        case refused
    }

    private struct Entry {
        var connection: Connection
        /// Set while idle: the mark of its place in `idleOrder`.
        var idleMark: UInt64?
    }

    let limit: Int
    private var entries: [UInt64: Entry] = [:]
    /// Connections in the order they became idle; an element whose mark is no longer its entry's is stale.
    private var idleOrder: [(id: UInt64, mark: UInt64)] = []
    private var idleHead = 0
    private var nextMark: UInt64 = 0

    init(limit: Int) { self.limit = limit }

    var count: Int { entries.count }

    /// A new connection, idle until its first request; at the limit, the one idle longest makes room.
    mutating func admit(_ id: UInt64, _ connection: Connection) -> Admission {
        var closing: Connection?
        if entries.count >= limit {
            guard let oldest = popLongestIdle() else { return .refused }
            closing = entries.removeValue(forKey: oldest)?.connection
        }
        entries[id] = Entry(connection: connection, idleMark: nil)
        markIdle(id)
        return .admitted(closing: closing)
    }

    mutating func markIdle(_ id: UInt64) {
        guard entries[id] != nil, entries[id]?.idleMark == nil else { return }
        nextMark += 1
        entries[id]?.idleMark = nextMark
        idleOrder.append((id, nextMark))
        compactIfNeeded()
    }

    mutating func markBusy(_ id: UInt64) { entries[id]?.idleMark = nil }

    mutating func remove(_ id: UInt64) { entries[id] = nil }

    func isIdle(_ id: UInt64) -> Bool { entries[id]?.idleMark != nil }

    private mutating func popLongestIdle() -> UInt64? {
        while idleHead < idleOrder.count {
            let candidate = idleOrder[idleHead]
            idleHead += 1
            if let entry = entries[candidate.id], entry.idleMark == candidate.mark { return candidate.id }
        }
        return nil
    }

    /// Drops stale places once they outnumber the live ones, so the order stays as large as the table.
    private mutating func compactIfNeeded() {
        guard idleOrder.count > 2 * entries.count + 1024 else { return }
        idleOrder = idleOrder[idleHead...].filter { entries[$0.id]?.idleMark == $0.mark }
        idleHead = 0
    }
}

/// The connection table of one server, shared by the connections of every event loop.
final class ConnectionRegistry: Sendable {
    private let table: Mutex<ConnectionTable<any Channel>>
    private let ids = Atomic<UInt64>(0)

    init(limit: Int) { table = Mutex(ConnectionTable(limit: limit)) }

    func newID() -> UInt64 { ids.add(1, ordering: .relaxed).newValue }
    func admit(_ id: UInt64, _ channel: any Channel) -> ConnectionTable<any Channel>.Admission { table.withLock { $0.admit(id, channel) } }
    func markIdle(_ id: UInt64) { table.withLock { $0.markIdle(id) } }
    func markBusy(_ id: UInt64) { table.withLock { $0.markBusy(id) } }
    func remove(_ id: UInt64) { table.withLock { $0.remove(id) } }
    var count: Int { table.withLock { $0.count } }
}

/// Hummingbird's HTTP/1.1 channel (with its idle timeout) behind two handlers of ours: `RawRequestGuard` before
/// the HTTP decoder (the connection limit, the header-read timeout, 414 and 431 counted on the bytes as they
/// come) and `RequestPartGuard` after it (the body-read timeout, which requests are in flight, and a problem body
/// for a request that is not HTTP).
struct GuardedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel
    let limits: EdgeLimits
    let registry: ConnectionRegistry

    init(responder: @escaping HTTPChannelHandler.Responder, limits: EdgeLimits, registry: ConnectionRegistry) {
        // NIO's own header limits stay above ours, so that ours (with problem bodies) refuse first.
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(maxHeaderFieldSize: 2 * limits.maxHead, maxHeaderListSize: 2 * limits.maxHead, maxHeaderFieldCount: 1000)
        base = HTTP1Channel(responder: responder, configuration: .init(idleTimeout: TimeAmount(limits.idleTimeout), httpDecoderConfiguration: decoder))
        self.limits = limits
        self.registry = registry
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let limits = self.limits, registry = self.registry
        // Hummingbird's setup completes at once, on the connection's event loop: ours follows in the same turn,
        // before the connection reads a byte.
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let state = ConnectionGuardState(id: registry.newID(), limits: limits, registry: registry, logger: logger)
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(RawRequestGuard(state), position: .first)
            try pipeline.addHandler(RequestPartGuard(state), position: .before(try pipeline.handler(type: HTTPConnectionStateHandler.self)))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// What the two handlers of one connection share; used only on the connection's event loop.
final class ConnectionGuardState {
    enum Phase {
        /// No byte of a next request yet.
        case awaitingHead
        /// Bytes of a head are coming: counted until the empty line that ends it.
        case readingHead(line: Int, total: Int, lineDone: Bool, atLineStart: Bool)
        /// The head's end went to the decoder; the decoder has not produced it yet.
        case headSent
        /// The head was decoded; the body (if any) is being read.
        case readingBody
    }

    let id: UInt64
    let limits: EdgeLimits
    let registry: ConnectionRegistry
    let logger: Logger
    var phase = Phase.awaitingHead
    /// Requests whose head was read and whose response has not ended.
    var inFlight = 0
    /// A response head was written and its end not yet.
    var answering = false
    var closing = false
    var admitted = false
    var rawContext: ChannelHandlerContext?
    var headerTimer: Scheduled<Void>?
    var bodyTimer: Scheduled<Void>?

    init(id: UInt64, limits: EdgeLimits, registry: ConnectionRegistry, logger: Logger) {
        self.id = id
        self.limits = limits
        self.registry = registry
        self.logger = logger
    }

    /// Answers with a problem and closes; only closes when another request on this connection still waits for
    /// its answer (`answers`: how many requests in flight this refusal answers, 1 for a body cut off, else 0).
    func refuse(_ status: HTTPResponseStatus, _ code: ProblemCode, _ detail: String, answers: Int = 0) {
        guard !closing, let context = rawContext else { return }
        closing = true
        cancelTimers()
        logger.debug("HTTP connection refused", metadata: ["status": "\(status.code)", "detail": "\(detail)"])
        guard !answering, inFlight <= answers else {
            context.close(promise: nil)
            return
        }
        let body = JSON.object([
            "type": .string(code.uri), "title": .string(status.reasonPhrase), "status": .number(Double(status.code)), "detail": .string(detail),
        ]).encoded()
        var buffer = context.channel.allocator.buffer(capacity: body.count + 160)
        buffer.writeString(
            "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: application/problem+json\r\ncontent-length: \(body.count)\r\nconnection: close\r\n\r\n")
        buffer.writeBytes(body)
        context.writeAndFlush(NIOAny(buffer)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func schedule(_ timeout: Duration, on context: ChannelHandlerContext, _ action: @escaping () -> Void) -> Scheduled<Void> {
        context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout), action)
    }

    func cancelTimers() {
        headerTimer?.cancel()
        headerTimer = nil
        bodyTimer?.cancel()
        bodyTimer = nil
    }

    static func seconds(_ d: Duration) -> String {
        let s = d.inSeconds
        return s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
    }
}

/// Before the HTTP decoder: admits the connection (or not), starts the header timer on a request's first byte,
/// and counts the head's bytes (414, 431) until the empty line that ends it.
final class RawRequestGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let state: ConnectionGuardState

    init(_ state: ConnectionGuardState) { self.state = state }

    func handlerAdded(context: ChannelHandlerContext) {
        state.rawContext = context
        if context.channel.isActive { admit(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        admit(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.cancelTimers()
        state.registry.remove(state.id)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        state.cancelTimers()
        state.rawContext = nil
    }

    private func admit(_ context: ChannelHandlerContext) {
        guard !state.admitted else { return }
        state.admitted = true
        switch state.registry.admit(state.id, context.channel) {
        case .admitted(let closing):
            if let closing {
                state.logger.debug("HTTP connection limit reached: closing the connection idle longest")
                closing.close(promise: nil)
            }
        case .refused:
            state.logger.notice("HTTP connection refused: \(state.limits.maxConnections) connections open, none idle")
            state.refuse(.serviceUnavailable, .tooManyConnections, "the server has \(state.limits.maxConnections) connections open and none idle; try again")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if state.closing { return }  // refused: the rest of the connection's bytes go nowhere
        let buffer = unwrapInboundIn(data)
        if case .awaitingHead = state.phase, buffer.readableBytes > 0 {
            state.phase = .readingHead(line: 0, total: 0, lineDone: false, atLineStart: false)
            state.registry.markBusy(state.id)
            let timeout = state.limits.headerTimeout
            state.headerTimer = state.schedule(timeout, on: context) { [state] in
                state.headerTimer = nil
                state.refuse(.requestTimeout, .timeout, "the request's head did not arrive within \(ConnectionGuardState.seconds(timeout))")
            }
        }
        if case .readingHead(var line, var total, var lineDone, var atLineStart) = state.phase {
            let limits = state.limits
            scan: for byte in buffer.readableBytesView {
                total += 1
                switch byte {
                case UInt8(ascii: "\n"):
                    if atLineStart {
                        state.phase = .headSent
                        break scan
                    }
                    lineDone = true
                    atLineStart = true
                case UInt8(ascii: "\r"):
                    break
                default:
                    atLineStart = false
                    if !lineDone { line += 1 }
                }
                if line > limits.maxRequestLine {
                    state.refuse(.uriTooLong, .uriTooLong, "the request line is longer than \(limits.maxRequestLine) bytes")
                    return
                }
                if total > limits.maxHead {
                    state.refuse(
                        .requestHeaderFieldsTooLarge, .headerTooLarge, "the request's header fields are larger than \(limits.maxHead) bytes")
                    return
                }
            }
            if case .readingHead = state.phase { state.phase = .readingHead(line: line, total: total, lineDone: lineDone, atLineStart: atLineStart) }
        }
        context.fireChannelRead(data)
    }
}

/// After the HTTP decoder: which requests are in flight (for the idle order and the header timer), the body
/// timer, and a problem answer for a request that is not HTTP/1.1.
final class RequestPartGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart
    let state: ConnectionGuardState

    init(_ state: ConnectionGuardState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            state.inFlight += 1
            state.headerTimer?.cancel()
            state.headerTimer = nil
            state.phase = .readingBody
            let timeout = state.limits.bodyTimeout
            state.bodyTimer = state.schedule(timeout, on: context) { [state] in
                state.bodyTimer = nil
                state.refuse(.requestTimeout, .timeout, "the request's body did not arrive within \(ConnectionGuardState.seconds(timeout))", answers: 1)
            }
        case .body:
            break
        case .end:
            state.bodyTimer?.cancel()
            state.bodyTimer = nil
            state.phase = .awaitingHead
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: state.answering = true
        case .body: break
        case .end:
            state.answering = false
            state.inFlight = max(0, state.inFlight - 1)
            if state.inFlight == 0, case .awaitingHead = state.phase { state.registry.markIdle(state.id) }
        }
        context.write(data, promise: promise)
    }

    /// A request NIO cannot parse: a problem (431 for header fields over NIO's own limits) instead of
    /// Hummingbird's empty 400, then the connection closes.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parse = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        // A body that breaks the framing (bad chunks) is answered in place of its request's handler.
        var answers = 0
        if case .readingBody = state.phase { answers = 1 }
        if case .headerOverflow = parse {
            state.refuse(.requestHeaderFieldsTooLarge, .headerTooLarge, "the request's header fields are too large", answers: answers)
        } else {
            state.refuse(.badRequest, .badRequest, "the request is not valid HTTP/1.1 (\(parse))", answers: answers)
        }
    }
}

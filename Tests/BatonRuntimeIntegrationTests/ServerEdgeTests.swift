import AsyncHTTPClient
import BatonCore
@testable import BatonServer
import BatonTestSupport
import Foundation
import Hummingbird
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

/// A raw TCP connection to a server: what it sent back, and whether it closed the connection.
struct RawConnection {
    final class Received: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
    }

    final class Collect: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let into: Received
        init(into: Received) { self.into = into }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            into.bytes.withLock { $0 += buffer.readableBytesView }
        }
    }

    let channel: any Channel
    let received: Received

    static func connect(_ base: String) async throws -> RawConnection {
        let port = Int(base.split(separator: ":").last ?? "") ?? 0
        let received = Received()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collect(into: received)) } }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, received: received)
    }

    func send(_ text: String) async throws { try await channel.writeAndFlush(ByteBuffer(string: text)).get() }
    var isOpen: Bool { channel.isActive }
    var text: String { received.text }
    func close() async { try? await channel.close().get() }  // closed already by the server: nothing left to do

    /// Waits until the server closed the connection; how long that took from `since`.
    func waitClosed(since: ContinuousClock.Instant, within timeout: Duration, _ what: String) async throws -> Duration {
        try await waitUntil(what, timeout: timeout) { !isOpen }
        return ContinuousClock.now - since
    }
}

/// The server's limits for the edge tests: short timeouts, so that a test sees them act.
let shortLimits: EdgeLimits = {
    var limits = EdgeLimits()
    limits.idleTimeout = .seconds(2)
    limits.headerTimeout = .seconds(1)
    limits.bodyTimeout = .seconds(1)
    return limits
}()

// Timeouts measured in seconds and a connection flood: run apart from the other loads (OneAtATime).
extension OneAtATime {
    @Suite("HTTP edge: refusals, timeouts and the connection limit of a real server", .serialized, .timeLimit(.minutes(5)))
    struct ServerEdgeTests {
        func request(_ s: Served, _ method: HTTPMethod, _ path: String, token: String? = nil, body: String? = nil) async throws -> Served.Answer {
            var request = HTTPClientRequest(url: s.base + path)
            request.method = method
            if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            if let body {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(string: body))
            }
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 1 << 20)
            return Served.Answer(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: Data(buffer: bytes))
        }

        @Test func routerLevelAnswersAre405HeadAnd400Problems() async throws {
            try await withServer(limits: shortLimits) { s in
                // A path known with other methods: 405 with Allow (HEAD wherever GET is), as a problem.
                let delete = try await request(s, .DELETE, "/v1/instances", token: s.operatorToken)
                #expect(delete.status == 405, "\(delete.text)")
                #expect(delete.header("Allow") == "GET, HEAD, POST")
                #expect(delete.header("Content-Type") == "application/problem+json")
                #expect(delete.json["type"] == "https://baton.dev/problems/method-not-allowed")
                let postHealth = try await request(s, .POST, "/healthz")
                #expect(postHealth.status == 405 && postHealth.header("Allow") == "GET, HEAD")
                let putTask = try await request(s, .PUT, "/v1/tasks/x%2Fy", token: s.operatorToken)
                #expect(putTask.status == 405 && putTask.header("Allow") == "GET, HEAD")
                // An unknown path stays a 404.
                #expect(try await request(s, .GET, "/v1/nothing-here", token: s.operatorToken).status == 404)

                // HEAD wherever GET is: the GET's status, no body.
                let head = try await request(s, .HEAD, "/healthz")
                #expect(head.status == 200 && head.body.isEmpty)
                #expect(try await request(s, .HEAD, "/v1/instances", token: s.operatorToken).status == 200)
                #expect(try await request(s, .HEAD, "/v1/instances").status == 401)

                // A truncated JSON body: a 400 that says where, not a 500.
                let truncated = try await request(s, .POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"loan_processing","input":{"a":"#)
                #expect(truncated.status == 400, "\(truncated.text)")
                #expect(truncated.json["detail"]?.stringValue?.contains("malformed JSON") == true, "\(truncated.text)")

                // A body shorter than its Content-Length, then the client stops sending: no 500.
                let cut = try await RawConnection.connect(s.base)
                try await cut.send(
                    "POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(s.operatorToken)\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"workflow_id\":")
                try await cut.channel.close(mode: .output).get()
                _ = try await cut.waitClosed(since: .now, within: .seconds(10), "the server to close the cut request")
                #expect(!cut.text.contains(" 500 "), "\(cut.text.prefix(300))")

                // null where a string or an array is expected: refused, naming the field (it must not widen a bulk action).
                let bulk = try await request(
                    s, .POST, "/v1/instances/bulk", token: s.operatorToken, body: #"{"action":"retry","filter":{"status":["suspended"],"workflow":null}}"#)
                #expect(bulk.status == 400, "\(bulk.text)")
                #expect(bulk.json["detail"]?.stringValue?.contains("filter.workflow") == true, "\(bulk.text)")
                let nullStatus = try await request(s, .POST, "/v1/instances/bulk", token: s.operatorToken, body: #"{"action":"retry","filter":{"status":null}}"#)
                #expect(nullStatus.status == 400 && nullStatus.json["detail"]?.stringValue?.contains("filter.status") == true, "\(nullStatus.text)")
                let emptyFilter = try await request(s, .POST, "/v1/instances/bulk", token: s.operatorToken, body: #"{"action":"retry","filter":{}}"#)
                #expect(emptyFilter.status == 400, "\(emptyFilter.text)")
                let nullID = try await request(s, .POST, "/v1/instances", token: s.operatorToken, body: #"{"workflow_id":"loan_processing","instance_id":null}"#)
                #expect(nullID.status == 400 && nullID.json["detail"]?.stringValue?.contains("instance_id") == true, "\(nullID.text)")
            }
        }

        @Test func overLongURIsHeadersAndGarbageAreProblems() async throws {
            try await withServer(limits: shortLimits) { s in
                func raw(_ text: String) async throws -> String {
                    let c = try await RawConnection.connect(s.base)
                    try await c.send(text)
                    _ = try await c.waitClosed(since: .now, within: .seconds(10), "the server to answer and close")
                    return c.text
                }
                let long = try await raw("GET /healthz?q=\(String(repeating: "a", count: 9000)) HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(long.hasPrefix("HTTP/1.1 414"), "\(long.prefix(300))")
                #expect(long.contains("application/problem+json") && long.contains("uri-too-long"), "\(long.prefix(300))")
                let big = try await raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 40_000))\r\n\r\n")
                #expect(big.hasPrefix("HTTP/1.1 431"), "\(big.prefix(300))")
                #expect(big.contains("application/problem+json") && big.contains("header-too-large"), "\(big.prefix(300))")
                let garbage = try await raw("NOT HTTP AT ALL\r\n\r\n")
                #expect(garbage.hasPrefix("HTTP/1.1 400") && garbage.contains("application/problem+json"), "\(garbage.prefix(300))")
                // A head just under the limits still gets through.
                let fine = try await raw("GET /healthz?q=\(String(repeating: "a", count: 7000)) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                #expect(fine.hasPrefix("HTTP/1.1 200"), "\(fine.prefix(300))")
            }
        }

        @Test func slowHeadersAndBodiesAreCutIdleConnectionsClosedEventStreamsKept() async throws {
            try await withServer(limits: shortLimits) { s in
                // A body trickled a byte at a time: cut off (408) once the body timeout (1 s) has passed.
                let slowBody = try await RawConnection.connect(s.base)
                let began = ContinuousClock.now
                try await slowBody.send(
                    "POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(s.operatorToken)\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
                while slowBody.isOpen, ContinuousClock.now - began < .seconds(10) {
                    try? await slowBody.send(" ")  // the server may close between the check and the write
                    try await Task.sleep(for: .milliseconds(200))
                }
                let bodyCut = try await slowBody.waitClosed(since: began, within: .seconds(1), "the slow body to be cut off")
                #expect(bodyCut < .seconds(4), "cut after \(bodyCut)")
                #expect(slowBody.text.hasPrefix("HTTP/1.1 408") && slowBody.text.contains("application/problem+json"), "\(slowBody.text.prefix(300))")

                // A head trickled a header at a time: cut off (408) once the header timeout (1 s) has passed.
                let slowHead = try await RawConnection.connect(s.base)
                let headBegan = ContinuousClock.now
                try await slowHead.send("GET /healthz HTTP/1.1\r\n")
                var n = 0
                while slowHead.isOpen, ContinuousClock.now - headBegan < .seconds(10) {
                    n += 1
                    try? await slowHead.send("X-Slow-\(n): yes\r\n")  // the server may close between the check and the write
                    try await Task.sleep(for: .milliseconds(200))
                }
                let headCut = try await slowHead.waitClosed(since: headBegan, within: .seconds(1), "the slow head to be cut off")
                #expect(headCut < .seconds(4), "cut after \(headCut)")
                #expect(slowHead.text.hasPrefix("HTTP/1.1 408"), "\(slowHead.text.prefix(300))")

                // A connection that sends nothing, and one idle after its answer: closed after the idle timeout (2 s).
                let idleBegan = ContinuousClock.now
                let silent = try await RawConnection.connect(s.base)
                let kept = try await RawConnection.connect(s.base)
                try await kept.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                let stream = try await RawConnection.connect(s.base)
                try await stream.send("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(s.operatorToken)\r\nAccept: text/event-stream\r\n\r\n")
                let silentClosed = try await silent.waitClosed(since: idleBegan, within: .seconds(10), "the silent connection to be closed")
                #expect(silentClosed >= .milliseconds(1500) && silentClosed < .seconds(6), "closed after \(silentClosed)")
                _ = try await kept.waitClosed(since: idleBegan, within: .seconds(10), "the kept-alive connection to be closed")
                #expect(kept.text.hasPrefix("HTTP/1.1 200"), "\(kept.text.prefix(200))")
                // The event stream is a response in flight: well past the idle timeout it is still open.
                try await waitUntil("the event stream to answer", timeout: .seconds(10)) { stream.text.hasPrefix("HTTP/1.1 200") }
                try await Task.sleep(for: .seconds(3))  // time passing is what this checks: 1.5 idle timeouts more
                #expect(stream.isOpen, "the event stream was closed: \(stream.text.prefix(300))")
                await stream.close()
            }
        }

        @Test func anIdleConnectionFloodDoesNotStopHealthz() async throws {
            BatonServer.raiseDescriptorLimit()
            var limits = EdgeLimits()
            limits.maxConnections = 300
            let flood = 1500
            try await withServer(limits: limits) { s in
                var connections: [RawConnection] = []
                defer { for c in connections { c.channel.close(promise: nil) } }
                // In bursts of 100 at once, as fast as they connect.
                for _ in 0..<(flood / 100) {
                    try await withThrowingTaskGroup(of: RawConnection?.self) { group in
                        for _ in 0..<100 {
                            group.addTask { try? await RawConnection.connect(s.base) }  // a connection refused under the flood counts as closed
                        }
                        for try await c in group { if let c { connections.append(c) } }
                    }
                }
                // /healthz answers, on a connection of its own, while the flood holds the limit.
                for _ in 0..<3 {
                    let health = try await RawConnection.connect(s.base)
                    try await health.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    _ = try await health.waitClosed(since: .now, within: .seconds(10), "/healthz to answer")
                    #expect(health.text.hasPrefix("HTTP/1.1 200"), "\(health.text.prefix(200))")
                }
                // The flood's oldest made room: no more than the limit are still open.
                let open = { connections.filter(\.isOpen).count }
                do {
                    try await waitUntil("the flood to be cut to the limit", timeout: .seconds(20)) { open() <= limits.maxConnections }
                } catch {
                    Issue.record("\(open()) of \(connections.count) flood connections still open, with a limit of \(limits.maxConnections)")
                }
            }
        }
    }
}

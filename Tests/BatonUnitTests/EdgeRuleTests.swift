import Foundation
import HTTPTypes
import Hummingbird
import Testing

@testable import BatonServer

@Suite("HTTP edge: the rules, as pure functions")
struct EdgeRuleTests {
    @Test func aSignInFollowsOnlyToAPathOnThisServer() {
        for good in ["/inbox", "/tasks/a%2Fb", "/instances?status=failed", "/definitions/loan/1", "/a:b"] {
            #expect(Console.safeNext(good) == good, "\(good)")
        }
        for bad in [
            "//evil.example/", "/\\evil.example/", "/%09/evil.example/", "/%0a/evil.example", "/%0D%0A/evil", "/\t/evil.example/", "/ /x", "https://evil.example/",
            "javascript:alert(1)", "evil.example", "", "/%5Cevil.example", "/%2F/evil.example", "/%252F/evil.example", "/%2509/evil.example", "/\u{200B}/x", "/%",
        ] {
            #expect(Console.safeNext(bad) == "/inbox", "\(bad) was let through")
        }
        #expect(Console.safeNext(nil) == "/inbox")
    }

    @Test func aSignInFormMustComeFromThisServer() {
        let host = "127.0.0.1:8080"
        #expect(Console.crossSiteRefusal(origin: nil, referer: nil, host: host, forwardedProto: nil) == nil, "a script without either header")
        #expect(Console.crossSiteRefusal(origin: "http://127.0.0.1:8080", referer: nil, host: host, forwardedProto: nil) == nil)
        #expect(Console.crossSiteRefusal(origin: nil, referer: "http://127.0.0.1:8080/login?next=/inbox", host: host, forwardedProto: nil) == nil)
        #expect(Console.crossSiteRefusal(origin: "https://baton.example", referer: nil, host: "baton.example", forwardedProto: "https") == nil)
        #expect(Console.crossSiteRefusal(origin: "http://baton.example:80", referer: nil, host: "baton.example", forwardedProto: nil) == nil)
        #expect(Console.crossSiteRefusal(origin: "http://127.0.0.1:9999", referer: nil, host: host, forwardedProto: nil) != nil, "another port")
        #expect(Console.crossSiteRefusal(origin: "http://evil.example", referer: nil, host: host, forwardedProto: nil) != nil)
        #expect(Console.crossSiteRefusal(origin: "null", referer: nil, host: host, forwardedProto: nil) != nil, "a sandboxed or file page")
        #expect(Console.crossSiteRefusal(origin: "https://127.0.0.1:8080", referer: nil, host: host, forwardedProto: nil) != nil, "another scheme")
        #expect(Console.crossSiteRefusal(origin: nil, referer: "http://evil.example/form", host: host, forwardedProto: nil) != nil)
        // Origin wins over Referer.
        #expect(Console.crossSiteRefusal(origin: "http://evil.example", referer: "http://127.0.0.1:8080/login", host: host, forwardedProto: nil) != nil)
    }

    @Test func aFullTableClosesTheConnectionIdleLongestOrRefuses() {
        var table = ConnectionTable<String>(limit: 3)
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            guard case .admitted(nil) = table.admit(UInt64(id), name) else { Issue.record("\(name) not admitted"); return }
        }
        table.markBusy(1)  // a request in flight on a
        table.markBusy(2)
        table.markIdle(2)  // b answered: idle again, after c
        guard case .admitted("c") = table.admit(4, "d") else { Issue.record("c (idle longest) should make room"); return }
        guard case .admitted("b") = table.admit(5, "e") else { Issue.record("b should make room next"); return }
        table.markBusy(4)
        table.markBusy(5)
        guard case .refused = table.admit(6, "f") else { Issue.record("nobody idle: the new one is refused"); return }
        table.remove(1)
        guard case .admitted(nil) = table.admit(7, "g") else { Issue.record("room after a close"); return }
        #expect(table.count == 3)
    }

    @Test func aTableUnderAFloodStaysAsLargeAsItsConnections() {
        var table = ConnectionTable<Int>(limit: 100)
        for id in 1...100_000 {
            if case .refused = table.admit(UInt64(id), id) { Issue.record("refused \(id) with idle ones open") }
            table.markBusy(UInt64(id))
            table.markIdle(UInt64(id))
        }
        #expect(table.count == 100)
    }

    @Test func methodsAllowedOnAPath() {
        let routes: [(path: RouterPath, method: HTTPRequest.Method)] = [
            ("v1/instances", .get), ("v1/instances", .post), ("v1/instances/{id}", .get), ("v1/instances/{id}/actions", .post), ("healthz", .get),
        ]
        #expect(MethodNotAllowedMiddleware<BasicRequestContext>.allowed("/v1/instances", routes: routes).map(\.rawValue) == ["GET", "HEAD", "POST"])
        #expect(MethodNotAllowedMiddleware<BasicRequestContext>.allowed("/v1/instances/a%2Fb", routes: routes).map(\.rawValue) == ["GET", "HEAD"])
        #expect(MethodNotAllowedMiddleware<BasicRequestContext>.allowed("/v1/instances/x/actions", routes: routes).map(\.rawValue) == ["POST"])
        #expect(MethodNotAllowedMiddleware<BasicRequestContext>.allowed("/v1/nothing", routes: routes).isEmpty)
    }

    @Test func nullIsRefusedOutsideFreeFormMembers() throws {
        #expect(throws: Problem.self) { try Request.refuseNulls(in: Data(#"{"filter":{"workflow":null}}"#.utf8), keeping: []) }
        #expect(throws: Problem.self) { try Request.refuseNulls(in: Data(#"{"input":null}"#.utf8), keeping: ["data"]) }
        try Request.refuseNulls(in: Data(#"{"input":null,"data":{"x":null}}"#.utf8), keeping: ["input", "data"])
        try Request.refuseNulls(in: Data(#"{"filter":{"status":["failed"]},"ids":["a"]}"#.utf8), keeping: [])
        do {
            try Request.refuseNulls(in: Data(#"{"filter":{"status":["failed"],"workflow":null}}"#.utf8), keeping: [])
        } catch let problem as Problem {
            #expect(problem.status == .badRequest && problem.detail?.contains("'filter.workflow'") == true, "\(problem.detail ?? "")")
        }
    }
}

import BatonCore
import BatonReadModel
import BatonWire
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdAuth
import Logging
import NIOCore

/// The web console: server-rendered pages (no JavaScript build chain), a small script for the buttons and
/// live updates, everything in the binary. Pages read the read model directly; buttons call the same `/v1`
/// API as every client, with the session cookie.
struct Console {
    static let sessionCookie = "baton_session"
    let service: BatonService
    var model: ReadModel { service.model }

    func add(to router: Router<ServerContext>) {
        router.get("/") { _, _ in Response.redirect(to: "/inbox") }
        router.get("static/console.css") { _, _ in Self.asset(PackageResources.console_css, "text/css; charset=utf-8") }
        router.get("static/console.js") { _, _ in Self.asset(PackageResources.console_js, "text/javascript; charset=utf-8") }
        router.get("login") { request, context in
            let next = try QueryParse.string(request, "next") ?? "/inbox"
            return html(loginPage(error: nil, next: next), principal: nil)
        }
        router.post("login") { request, context -> Response in
            if let refusal = Self.crossSiteRefusal(
                origin: request.headers[.origin], referer: request.headers[.referer], host: request.head.authority,
                forwardedProto: request.headers[HTTPField.Name("X-Forwarded-Proto")!])
            {
                context.logger.notice("cross-site sign-in refused", metadata: ["reason": "\(refusal)"])
                return html(loginPage(error: "Sign in from this server's own page: \(refusal).", next: "/inbox"), principal: nil, status: .forbidden)
            }
            struct Form: Decodable { var name: String; var password: String; var next: String? }
            let form: Form
            do {
                form = try await URLEncodedFormDecoder().decode(Form.self, from: request, context: context)
            } catch {
                return html(loginPage(error: "Give a name and a password.", next: "/inbox"), principal: nil, status: .badRequest)
            }
            let next = Self.safeNext(form.next)
            guard let principal = await service.auth.signIn(name: form.name, password: form.password) else {
                return html(loginPage(error: "That name and password do not match.", next: next), principal: nil, status: .unauthorized)
            }
            let token = try await service.auth.session(for: principal)
            var response = Response.redirect(to: next, type: .found)
            response.setCookie(
                Cookie(name: Self.sessionCookie, value: token, maxAge: Int(service.auth.sessionLifetime), path: "/", httpOnly: true, sameSite: .strict))
            return response
        }
        router.post("logout") { _, _ -> Response in
            var response = Response.redirect(to: "/login", type: .found)
            response.setCookie(Cookie(name: Self.sessionCookie, value: "", maxAge: 0, path: "/", httpOnly: true, sameSite: .strict))
            return response
        }
        router.get("inbox") { request, context in
            try page(request, context) { p in try inboxPage(request, p) }
        }
        router.get("tasks/{id}") { request, context in
            try page(request, context) { p in
                let id = try pathID(context, "id", what: "task id")
                guard let task = model.task(id) else { throw Problem.notFound("no task '\(id)'") }
                return taskPage(task, p)
            }
        }
        router.get("instances") { request, context in
            try page(request, context) { p in try instancesPage(request, p) }
        }
        router.get("instances/{id}") { request, context in
            try page(request, context) { p in
                let id = try pathID(context, "id", what: "instance id")
                guard let detail = model.detail(id) else { throw Problem.notFound("no instance '\(id)'") }
                return instancePage(detail, p)
            }
        }
        router.get("definitions") { request, context in
            try page(request, context) { _ in definitionsPage() }
        }
        router.get("definitions/{id}/{version}") { request, context in
            try page(request, context) { _ in
                let id = try pathID(context, "id", what: "workflow id")
                let version = try BatonService.version(context)
                guard let (record, workflow) = model.definition(id, version: version) else { throw Problem.notFound("no workflow '\(id)' version \(version)") }
                return definitionPage(record, workflow)
            }
        }
        router.get("alerts") { request, context in
            try page(request, context) { p in alertsPage(p) }
        }
    }

    static func asset(_ bytes: [UInt8], _ type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "max-age=300"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// Only a path on this server may follow a sign-in (no open redirect); anything else goes to the inbox.
    static func safeNext(_ next: String?) -> String {
        guard let next, isLocalPath(next) else { return "/inbox" }
        return next
    }

    /// A same-origin path: exactly one `/` first (not `//`, not `/\`), no backslash, no whitespace or control
    /// character, whether raw or percent-encoded (browsers drop a tab or a newline from a URL, so
    /// `/%09/evil.example/` would become `//evil.example/`), hence no scheme and no host.
    static func isLocalPath(_ path: String) -> Bool {
        var text = path
        // Decoded until nothing changes (a few rounds at most), so that `%2509` is judged as the tab it may become.
        for _ in 0..<4 {
            guard text.hasPrefix("/"), !text.hasPrefix("//") else { return false }
            for scalar in text.unicodeScalars {
                if scalar == "\\" || scalar.properties.isWhitespace { return false }
                switch scalar.properties.generalCategory {
                case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate, .privateUse: return false
                default: continue
                }
            }
            guard let decoded = text.removingPercentEncoding else { return false }
            if decoded == text { return true }
            text = decoded
        }
        return false
    }

    /// Why a sign-in form is refused as cross-site (login CSRF: a form on another site signing the visitor in
    /// as the attacker), or nil. The browser's `Origin` (else its `Referer`) must name this server as the
    /// request reached it: its `Host`, and the scheme it was reached by (`X-Forwarded-Proto` from a proxy that
    /// terminates TLS, else http). A client that sends neither header (curl, a script) is no browser and is let
    /// through.
    static func crossSiteRefusal(origin: String?, referer: String?, host: String?, forwardedProto: String?) -> String? {
        let claimed: String
        if let origin, !origin.isEmpty {
            claimed = origin
        } else if let referer, !referer.isEmpty {
            claimed = referer
        } else {
            return nil
        }
        guard let host, !host.isEmpty else { return "the request names no Host to compare its origin with" }
        let scheme = forwardedProto?.split(separator: ",").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? "http"
        guard let url = URLComponents(string: claimed), let claimedScheme = url.scheme?.lowercased(), let claimedHost = url.host?.lowercased() else {
            return "the sign-in form came from '\(claimed)', not from this server"
        }
        func normalized(_ scheme: String, _ authority: String) -> String {
            let defaultPort = scheme == "https" ? ":443" : ":80"
            let lower = authority.lowercased()
            return lower.hasSuffix(defaultPort) ? String(lower.dropLast(defaultPort.count)) : lower
        }
        let claimedAuthority = claimedHost.contains(":") ? "[\(claimedHost)]" : claimedHost
        let claimedFull = normalized(claimedScheme, claimedAuthority + (url.port.map { ":\($0)" } ?? ""))
        guard claimedScheme == scheme, claimedFull == normalized(scheme, host) else {
            return "the sign-in form came from \(claimedScheme)://\(claimedFull), not from this server (\(scheme)://\(normalized(scheme, host)))"
        }
        return nil
    }

    /// A page for a signed-in person; without a session, the sign-in page (then back here).
    func page(_ request: Request, _ context: ServerContext, _ body: (Principal) throws -> (title: String, html: String)) throws -> Response {
        guard let principal = context.identity else {
            let target = request.uri.path + (request.uri.query.map { "?\($0)" } ?? "")
            return Response.redirect(to: "/login?next=\(target.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "/inbox")", type: .found)
        }
        do {
            return html(try body(principal), principal: principal)
        } catch let problem as Problem {
            return html((problem.status.reasonPhrase, "<h1>\(e(problem.status.reasonPhrase))</h1><p class=\"problem\">\(e(problem.detail ?? ""))</p>"), principal: principal, status: problem.status)
        }
    }

    func html(_ content: (title: String, html: String), principal: Principal?, status: HTTPResponse.Status = .ok) -> Response {
        var nav = ""
        if let principal {
            let counts = service.inboxCount(.open, for: principal)
            nav = """
                <nav><a href="/inbox">Inbox<span class="count" id="inbox-count">\(counts)</span></a><a href="/instances">Instances</a>\
                <a href="/definitions">Definitions</a><a href="/alerts">Alerts</a>\
                <span class="who" id="who">\(e(principal.subject)) <small>\(e(principal.roles.sorted().joined(separator: ", ")))</small></span>\
                <form method="post" action="/logout" class="inline"><button type="submit" id="sign-out">Sign out</button></form></nav>
                """
        }
        let text = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(e(content.title)) · Baton</title><link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
            <body><header><a class="brand" href="/">Baton</a>\(nav)</header><div id="message" role="status"></div><main>\(content.html)</main></body></html>
            """
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    // MARK: Pages

    func loginPage(error: String?, next: String) -> (String, String) {
        ("Sign in", """
            <section class="login"><h1>Sign in</h1>\(error.map { "<p class=\"problem\" id=\"login-error\">\(e($0))</p>" } ?? "")
            <form method="post" action="/login" id="login-form"><input type="hidden" name="next" value="\(e(Self.safeNext(next)))">
            <label>Name <input name="name" id="name" autocomplete="username" required autofocus></label>
            <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
            <button type="submit" id="sign-in">Sign in</button></form></section>
            """)
    }

    func inboxPage(_ request: Request, _ p: Principal) throws -> (String, String) {
        let viewName = try QueryParse.string(request, "view") ?? "open"
        guard let view = BatonService.InboxView(rawValue: viewName) else { throw Problem.badRequest("unknown view '\(viewName)'") }
        let q = try QueryParse.string(request, "q")
        let tasks = service.inbox(view, for: p, search: q)
        let tabs = BatonService.InboxView.allCases.map { v in
            "<a class=\"tab\(v == view ? " active" : "")\" id=\"view-\(v.rawValue)\" href=\"/inbox?view=\(v.rawValue)\">\(v.rawValue.capitalized)</a>"
        }.joined()
        let rows = tasks.map { t -> String in
            let acts = service.actions(t, for: p)
            var buttons = ""
            if acts.contains("claim") { buttons += button("Claim", "/v1/tasks/\(BatonService.escape(t.taskID))/claim", id: "claim") }
            if acts.contains("unclaim") { buttons += button("Unclaim", "/v1/tasks/\(BatonService.escape(t.taskID))/unclaim", id: "unclaim") }
            return """
                <tr class="task" data-task="\(e(t.taskID))"><td><a class="task-link" href="/tasks/\(BatonService.escape(t.taskID))">\(e(t.title))</a></td>
                <td><a href="/instances/\(BatonService.escape(t.instanceID))">\(e(t.instanceID))</a></td><td>\(e(t.assignee))</td>
                <td>\(time(t.status == .open ? t.dueAt : t.closedAt ?? t.dueAt, due: t.status == .open))</td><td>\(e(t.claimedBy ?? "—"))</td>
                <td>\(badge(t.status.rawValue))</td><td>\(buttons)</td></tr>
                """
        }.joined(separator: "\n")
        let due = view == .completed ? "Closed" : "Due"
        return ("Inbox", """
            <h1>Inbox</h1><div class="tabs">\(tabs)</div>
            <form class="search" method="get" action="/inbox"><input type="hidden" name="view" value="\(view.rawValue)">
            <input name="q" id="task-search" placeholder="Search title or instance" value="\(e(q ?? ""))"><button>Search</button></form>
            \(tasks.isEmpty ? "<p class=\"empty\" id=\"no-tasks\">No tasks here.</p>" : """
            <table id="tasks"><thead><tr><th>Task</th><th>Instance</th><th>For</th><th>\(due)</th><th>Claimed by</th><th>Status</th><th></th></tr></thead>
            <tbody>\(rows)</tbody></table>
            """)
            """)
    }

    func taskPage(_ t: TaskView, _ p: Principal) -> (String, String) {
        let acts = service.actions(t, for: p)
        let url = "/v1/tasks/\(BatonService.escape(t.taskID))"
        var controls = ""
        if acts.contains("claim") { controls += button("Claim", "\(url)/claim", id: "claim") }
        if acts.contains("unclaim") { controls += button("Unclaim", "\(url)/unclaim", id: "unclaim") }
        if acts.contains("approve") {
            controls += """
                <form class="decide" id="decide" data-url="\(url)/decision"><label>Comment <textarea name="comment" id="comment" rows="3"></textarea></label>
                <button type="button" class="approve" id="approve" data-approved="true">Approve</button>
                <button type="button" class="reject" id="reject" data-approved="false">Reject</button></form>
                """
        }
        let history = t.history.map { h in
            "<tr><td>\(time(h.at))</td><td>\(e(h.action.rawValue))</td><td class=\"by\">\(e(h.by ?? ""))</td><td>\(e(h.to ?? ""))</td><td class=\"comment\">\(e(h.comment ?? ""))</td></tr>"
        }.joined()
        return (t.title, """
            <h1>\(e(t.title))</h1>
            <dl class="facts"><dt>Status</dt><dd id="task-status">\(badge(t.status.rawValue))</dd><dt>Instance</dt><dd><a id="instance-link" href="/instances/\(BatonService.escape(t.instanceID))">\(e(t.instanceID))</a> (\(e(t.workflowID)), step \(e(t.step)), attempt \(t.attempt))</dd>
            <dt>For</dt><dd>\(e(t.assignee))</dd><dt>Due</dt><dd>\(time(t.dueAt, due: t.status == .open))</dd><dt>Claimed by</dt><dd id="claimed-by">\(e(t.claimedBy ?? "nobody"))</dd>
            \(t.decidedBy.map { "<dt>Decided by</dt><dd id=\"decided-by\">\(e($0))</dd>" } ?? "")</dl>
            <h2>Details</h2><pre class="json">\(e(pretty(t.input)))</pre>
            <div class="controls">\(controls)</div>
            <h2>History</h2><table id="history"><thead><tr><th>When</th><th>What</th><th>By</th><th>To</th><th>Comment</th></tr></thead><tbody>\(history)</tbody></table>
            """)
    }

    func instancesPage(_ request: Request, _ p: Principal) throws -> (String, String) {
        var filter = try QueryParse.filter(request)
        if let q = try QueryParse.string(request, "q") { filter.idPrefix = q }
        var cursor: PageCursor?
        if let token = try QueryParse.string(request, "cursor") { cursor = PageCursor(token: token) }
        let page = model.instances(filter, limit: 50, after: cursor)
        let counts = model.counts()
        let statusLinks = InstanceStatus.allCases.map { s in
            "<a class=\"tab\(filter.statuses == [s] ? " active" : "")\" href=\"/instances?status=\(s.rawValue)\">\(s.rawValue) <span class=\"count\">\(counts[s] ?? 0)</span></a>"
        }.joined()
        let rows = page.items.map { s in
            """
            <tr><td>\(p.isOperator ? "<input type=\"checkbox\" class=\"pick\" value=\"\(e(s.instanceID))\">" : "")</td>
            <td><a class="instance-link" href="/instances/\(BatonService.escape(s.instanceID))">\(e(s.instanceID))</a></td><td>\(e(s.workflowID)) v\(s.version)</td>
            <td>\(badge(s.status.rawValue))</td><td>\(time(s.startedAt))</td><td>\(time(s.updatedAt))</td><td>\(e(s.failedStep ?? ""))</td></tr>
            """
        }.joined(separator: "\n")
        var query = URLComponents()
        query.queryItems = [
            filter.statuses.map { URLQueryItem(name: "status", value: $0.map(\.rawValue).sorted().joined(separator: ",")) },
            filter.workflowID.map { URLQueryItem(name: "workflow", value: $0) }, page.next.map { URLQueryItem(name: "cursor", value: $0.token) },
        ].compactMap { $0 }
        let bulk = p.isOperator ? """
            <div class="bulk">\(button("Retry selected", "/v1/instances/bulk", id: "bulk-retry", body: #"{"action":"retry"}"#, bulk: true))\
            \(button("Cancel selected", "/v1/instances/bulk", id: "bulk-cancel", body: #"{"action":"cancel","reason":"cancelled from the console"}"#, bulk: true))</div>
            """ : ""
        return ("Instances", """
            <h1>Instances</h1><div class="tabs"><a class="tab\(filter.statuses == nil ? " active" : "")" href="/instances">all</a>\(statusLinks)</div>
            <form class="search" method="get" action="/instances"><input name="q" id="instance-search" placeholder="Instance id (or its start)" value="\(e(filter.idPrefix ?? ""))">
            <input name="workflow" placeholder="Workflow" value="\(e(filter.workflowID ?? ""))"><button>Search</button></form>\(bulk)
            <table id="instances"><thead><tr><th></th><th>Instance</th><th>Workflow</th><th>Status</th><th>Started</th><th>Changed</th><th>Failed step</th></tr></thead>
            <tbody>\(rows)</tbody></table>\(page.next != nil ? "<p><a id=\"next-page\" href=\"/instances?\(query.percentEncodedQuery ?? "")\">Next page →</a></p>" : "")
            """)
    }

    func instancePage(_ d: InstanceDetail, _ p: Principal) -> (String, String) {
        let i = d.instance
        let url = "/v1/instances/\(BatonService.escape(i.instanceID))"
        var svg = ""
        if let (state, workflow, _) = model.state(i.instanceID), let workflow { svg = GraphSVG.render(workflow, state: state) }
        var ops = ""
        if p.isOperator, !i.status.isFinished {
            if i.status == .suspended {
                ops += button("Resume", "\(url)/actions", id: "op-resume", body: #"{"action":"resume"}"#)
                ops += button("Retry failed", "\(url)/actions", id: "op-retry", body: #"{"action":"retry"}"#)
            }
            ops += button("Cancel", "\(url)/actions", id: "op-cancel", body: #"{"action":"cancel","reason":"cancelled from the console by \#(jsonEscape(p.subject))"}"#)
        }
        let steps = i.steps.map { s in
            """
            <tr class="step" data-step="\(e(s.id))"><td>\(e(s.id))</td><td>\(e(s.pool ?? s.type))</td><td>\(badge(s.status.rawValue))</td><td>\(s.attempt)</td>
            <td>\(s.startedAt.map { time($0) } ?? "")</td><td>\(duration(s.startedAt, s.finishedAt))</td>
            <td>\(s.compensation.map { badge("compensation \($0.status.rawValue)") } ?? "")</td>
            <td class="error">\(e(s.error ?? ""))</td><td>\(s.output.map { "<details><summary>output</summary><pre class=\"json\">\(e(pretty($0)))</pre></details>" } ?? "")</td></tr>
            """
        }.joined(separator: "\n")
        let tasks = d.tasks.map { t in
            let comment = t.comment.map { " — “\(e($0))”" } ?? ""
            return """
                <li class="task" data-task="\(e(t.taskID))"><a href="/tasks/\(BatonService.escape(t.taskID))">\(e(t.title))</a> \(badge(t.status.rawValue)) \
                <span class="decider">\(t.decidedBy.map { "by \(e($0))" } ?? "")</span><span class="task-comment">\(comment)</span></li>
                """
        }.joined()
        let timeline = d.timeline.map { t in
            "<tr><td>\(time(t.at))</td><td>\(e(t.event))</td><td>\(e(t.step ?? ""))</td><td>\(e(t.detail ?? ""))</td></tr>"
        }.joined()
        return (i.instanceID, """
            <div data-live="\(url)/events" data-updated="\(d.updatedAt)"></div>
            <h1>\(e(i.instanceID)) <span id="instance-status">\(badge(i.status.rawValue))</span></h1>
            <dl class="facts"><dt>Workflow</dt><dd><a href="/definitions/\(BatonService.escape(i.workflowID))/\(i.version)">\(e(i.workflowID)) v\(i.version)</a></dd>
            <dt>Started</dt><dd>\(time(i.startedAt))</dd>\(i.finishedAt.map { "<dt>Finished</dt><dd>\(time($0)) (\(duration(i.startedAt, $0)))</dd>" } ?? "")
            \(i.reason.map { "<dt>Reason</dt><dd class=\"error\" id=\"reason\">\(e($0))</dd>" } ?? "")
            \(d.compensated.isEmpty ? "" : "<dt>Compensated</dt><dd id=\"compensated\">\(e(d.compensated.joined(separator: ", ")))</dd>")</dl>
            <div class="controls">\(ops)</div>
            <div class="dag" id="dag">\(svg)</div>
            <h2>Steps</h2><table id="steps"><thead><tr><th>Step</th><th>Pool</th><th>Status</th><th>Attempt</th><th>Started</th><th>Took</th><th>Compensation</th><th>Error</th><th></th></tr></thead><tbody>\(steps)</tbody></table>
            \(tasks.isEmpty ? "" : "<h2>Tasks</h2><ul id=\"instance-tasks\">\(tasks)</ul>")
            <h2>Input</h2><pre class="json">\(e(pretty(i.input)))</pre>\(i.output.map { "<h2>Output</h2><pre class=\"json\">\(e(pretty($0)))</pre>" } ?? "")
            <h2>Timeline</h2><table id="timeline"><tbody>\(timeline)</tbody></table>
            """)
    }

    func definitionsPage() -> (String, String) {
        let rows = model.definitions().map { d in
            """
            <tr><td><a href="/definitions/\(BatonService.escape(d.workflowID))/\(d.version)">\(e(d.workflowID))</a></td><td>\(d.version)</td><td>\(d.steps)</td>
            <td>\(time(d.registeredAt))</td><td class="error">\(e(d.error ?? ""))</td></tr>
            """
        }.joined()
        return ("Definitions", "<h1>Definitions</h1><table id=\"definitions\"><thead><tr><th>Workflow</th><th>Version</th><th>Steps</th><th>Registered</th><th></th></tr></thead><tbody>\(rows)</tbody></table>")
    }

    func definitionPage(_ record: DefinitionRecord, _ workflow: Workflow?) -> (String, String) {
        let svg = workflow.map { GraphSVG.render($0, state: nil) } ?? "<p class=\"problem\">This document does not load.</p>"
        return ("\(record.workflowID) v\(record.version)", """
            <h1>\(e(record.workflowID)) <small>v\(record.version)</small></h1><div class="dag">\(svg)</div>
            <h2>Document</h2><pre class="json">\(e(record.document))</pre>
            """)
    }

    func alertsPage(_ p: Principal) -> (String, String) {
        let alerts = model.alerts(limit: 200).map { a in
            let link = a.alert.instanceID.map { "<a href=\"/instances/\(BatonService.escape($0))\">\(e($0))</a>" } ?? a.alert.partition.map { "events partition \($0)" } ?? ""
            return "<tr><td>\(time(a.at))</td><td>\(badge(a.alert.severity.rawValue))</td><td>\(link)</td><td>\(e(a.alert.step ?? ""))</td><td>\(e(a.alert.message))</td></tr>"
        }.joined()
        let letters = model.deadLetters(limit: 200).map { d in
            let action = p.isOperator && d.isWhole ? button("Publish again", "/v1/deadletters/\(d.id)/republish", id: "republish-\(d.id)") : ""
            return """
                <tr><td>\(time(d.at))</td><td>\(e(d.sourceTopic ?? "")) [\(d.sourcePartition.map(String.init) ?? "?")]@\(d.sourceOffset.map(String.init) ?? "?")</td>
                <td>\(e(d.reason))</td><td><pre class="json">\(e(String(decoding: (d.value ?? Data()).prefix(600), as: UTF8.self)))</pre></td><td>\(action)</td></tr>
                """
        }.joined()
        return ("Alerts", """
            <h1>Alerts</h1><table id="alerts"><thead><tr><th>When</th><th>Severity</th><th>About</th><th>Step</th><th>Message</th></tr></thead><tbody>\(alerts)</tbody></table>
            <h2>Dead letters</h2><table id="deadletters"><thead><tr><th>When</th><th>From</th><th>Reason</th><th>Record</th><th></th></tr></thead><tbody>\(letters)</tbody></table>
            """)
    }

    // MARK: Pieces

    func button(_ label: String, _ url: String, id: String, body: String = "{}", bulk: Bool = false) -> String {
        "<button type=\"button\" class=\"action\" id=\"\(e(id))\" data-url=\"\(e(url))\" data-body=\"\(e(body))\"\(bulk ? " data-bulk=\"true\"" : "")>\(e(label))</button>"
    }

    func badge(_ status: String) -> String { "<span class=\"badge \(e(status.replacingOccurrences(of: " ", with: "-")))\">\(e(status.replacingOccurrences(of: "_", with: " ")))</span>" }

    func time(_ ms: Int64, due: Bool = false) -> String {
        let iso = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
        return "<time datetime=\"\(iso)\" data-ms=\"\(ms)\"\(due ? " class=\"due\"" : "")>\(iso)</time>"
    }

    func duration(_ from: Int64?, _ to: Int64?) -> String {
        guard let from, let to else { return "" }
        let ms = to - from
        return ms < 1000 ? "\(ms) ms" : ms < 120_000 ? String(format: "%.1f s", Double(ms) / 1000) : "\(ms / 60_000) min"
    }

    func pretty(_ json: JSON) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: JSONSerialization.jsonObject(with: json.encoded(), options: [.fragmentsAllowed]), options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed])
        else { return String(decoding: json.encoded(), as: UTF8.self) }  // shown compact when it cannot be re-indented
        return String(decoding: data, as: UTF8.self)
    }

    func jsonEscape(_ s: String) -> String { String(decoding: JSON.string(s).encoded().dropFirst().dropLast(), as: UTF8.self) }

    func e(_ s: String) -> String { GraphSVG.escape(s) }
}

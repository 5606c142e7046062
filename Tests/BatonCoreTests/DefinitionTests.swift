import BatonCore
import Foundation
import Testing

@Suite("Definitions: loading and validation")
struct DefinitionTests {
    static let seed = #"{"workflow_id":"order_fulfillment","steps":[{"id":"validate","type":"service_call","depends_on":[]},{"id":"reserve","type":"service_call","depends_on":["validate"]},{"id":"charge","type":"service_call","depends_on":["reserve"]},{"id":"ship","type":"service_call","depends_on":["charge"]},{"id":"notify","type":"notification","depends_on":["ship"]}]}"#

    @Test func theSeedDocumentLoadsAsItIs() throws {
        let w = try DefinitionLoader.load(Data(Self.seed.utf8))
        #expect(w.id == "order_fulfillment")
        #expect(w.version == 1)
        #expect(w.steps.map(\.id) == ["validate", "reserve", "charge", "ship", "notify"])
        #expect(w.steps.map(\.type) == ["service_call", "service_call", "service_call", "service_call", "notification"])
        #expect(w.steps[2].dependsOn == ["reserve"])
        // Defaults: 3 attempts, exponential backoff, 30 minutes per step.
        #expect(w.steps[0].retryPolicy.maxAttempts == 3)
        #expect(w.steps[0].effectiveTimeout == .minutes(30))
        #expect(w.definition.onFailure == FailurePolicy(compensate: true, alert: true, then: .fail))
    }

    @Test(arguments: ["order-fulfillment.json", "order-fulfillment.yaml", "order-fulfillment-events.yaml", "hr-onboarding.yaml", "loan-processing.yaml", "cicd-pipeline.yaml"])
    func everyExampleValidates(_ file: String) throws {
        let data = try Data(contentsOf: examplesDirectory.appendingPathComponent(file))
        let w = try DefinitionLoader.load(data, source: file)
        #expect(!w.steps.isEmpty)
    }

    @Test func theFullFormatIsRead() throws {
        let w = try workflow(
            """
            workflow_id: loan
            version: 3
            timeout: 7d
            on_failure: { compensate: false, alert: false, then: suspend }
            steps:
              - id: score
                type: bureau
                worker: bureau.experian
                retry: { max_attempts: 5, initial_backoff: 500ms, multiplier: 3, max_backoff: 1m, jitter: 0 }
                timeout: 1h30m
                input: { applicant: $.input.applicant, literal: "$$not a path", n: 3 }
              - id: approve
                type: human_task
                depends_on: [score]
                assignee: role:credit_manager
                title: Approve it
                timeout: 48h
                on_timeout: { action: escalate, escalate_to: role:head_of_credit, then: fail }
              - id: pay
                type: payments
                depends_on: [approve]
                when: $.steps.score.output.score >= 600 && $.input.amount < 50000
                for_each: { items: $.input.tranches, max_concurrency: 2 }
                input: { amount: $.item.amount, n: $.index }
                compensation: { type: payments, worker: payments.refund, input: { id: $.steps.pay.output.id }, retry: { max_attempts: 9 }, timeout: 5m }
            """)
        #expect(w.version == 3)
        #expect(w.definition.timeout == .days(7))
        #expect(w.definition.onFailure == FailurePolicy(compensate: false, alert: false, then: .suspend))
        let score = w.steps[0]
        #expect(score.pool == "bureau.experian")
        #expect(score.retryPolicy == RetryPolicy(maxAttempts: 5, initialBackoff: .milliseconds(500), multiplier: 3, maxBackoff: .minutes(1), jitter: 0))
        #expect(score.effectiveTimeout == .minutes(90))
        let approve = w.steps[1]
        #expect(approve.humanTask == HumanTaskSpec(assignee: "role:credit_manager", title: "Approve it", onTimeout: .escalate, escalateTo: "role:head_of_credit", afterEscalation: .fail))
        #expect(approve.effectiveTimeout == .hours(48))
        let pay = w.steps[2]
        #expect(pay.forEach == ForEach(items: "$.input.tranches", maxConcurrency: 2))
        #expect(pay.compensation?.pool == "payments.refund")
        #expect(pay.compensation?.retry?.maxAttempts == 9)
        #expect(pay.compensation?.timeout == .minutes(5))
    }

    @Test func durations() {
        #expect(Millis.parse("30m") == .minutes(30))
        #expect(Millis.parse("48h") == .hours(48))
        #expect(Millis.parse("500ms") == .milliseconds(500))
        #expect(Millis.parse("1h30m") == .minutes(90))
        #expect(Millis.parse("7d") == .days(7))
        for bad in ["", "30", "m", "30 minutes", "-5s", "1.5h", "30M", "99999999999999999999s"] {
            #expect(Millis.parse(bad) == nil, "\(bad)")
        }
        #expect(Millis.minutes(90).description == "1h30m")
    }

    @Test func aCycleIsPrintedAlongItsSteps() {
        let errors = definitionErrors(
            """
            {"workflow_id":"w","steps":[
              {"id":"validate","type":"t"},
              {"id":"reserve","type":"t","depends_on":["validate","charge"]},
              {"id":"charge","type":"t","depends_on":["reserve"]}]}
            """)
        #expect(errors.map(\.description) == ["steps[1].depends_on: cycle: reserve -> charge -> reserve"])
        let longer = definitionErrors(
            """
            {"workflow_id":"w","steps":[{"id":"a","type":"t","depends_on":["c"]},{"id":"b","type":"t","depends_on":["a"]},{"id":"c","type":"t","depends_on":["b"]}]}
            """)
        #expect(longer.map(\.message) == ["cycle: a -> b -> c -> a"])
        let selfLoop = definitionErrors(#"{"workflow_id":"w","steps":[{"id":"a","type":"t","depends_on":["a"]}]}"#)
        #expect(selfLoop.map(\.message) == ["a step cannot depend on itself: a -> a"])
    }

    @Test func everyErrorIsReportedAtOnceWithItsPath() {
        let errors = definitionErrors(
            """
            workflow_id: broken
            timout: 5m
            steps:
              - id: validate
                type: service_call
              - id: reserve
                type: service_call
                depends_on: [validate, chrage]
                timeout: 30 minutes
              - id: approve
                type: human_task
                assignee: role:manager
                depends_on: [validate]
                compensation: { type: undo }
              - id: approve
                type: service_call
              - id: ship
                type: service_call
                depnds_on: [validate]
            """
        ).map(\.description)
        #expect(errors.contains("timout: unknown field; did you mean 'timeout'? known fields: workflow_id, version, description, timeout, on_failure, retention, signals, triggers, steps"))
        #expect(errors.contains("steps[1].timeout: '30 minutes' is not a duration; write it as 500ms, 30s, 30m, 48h, 7d or 1h30m"))
        #expect(errors.contains("steps[3].id: duplicate id 'approve' (first used by steps[2])"))
        #expect(errors.contains("steps[1].depends_on[1]: unknown step 'chrage'"))
        #expect(errors.contains { $0.hasPrefix("steps[2].compensation: a human_task cannot have a compensation") })
        #expect(errors.contains { $0.hasPrefix("steps[4].depnds_on: unknown field; did you mean 'depends_on'?") })
        #expect(errors.count == 6)
    }

    @Test func didYouMeanForAStepThatExists() {
        let errors = definitionErrors(#"{"workflow_id":"w","steps":[{"id":"charge","type":"t"},{"id":"ship","type":"t","depends_on":["chrage"]}]}"#)
        #expect(errors.map(\.description) == ["steps[1].depends_on[0]: unknown step 'chrage' (did you mean 'charge'?)"])
    }

    @Test func inputPathsMayOnlyReadAncestors() {
        let errors = definitionErrors(
            """
            workflow_id: w
            steps:
              - { id: a, type: t }
              - { id: b, type: t, depends_on: [a] }
              - { id: c, type: t, depends_on: [a], input: { x: $.steps.b.output.x, y: $.steps.a.output.y } }
              - { id: d, type: t, depends_on: [c], input: { z: $.steps.b.output.z }, when: $.steps.nope.output.q == 1 }
              - { id: e, type: t, input: { q: $.stepz.x, r: $.item } }
            """
        ).map(\.description)
        #expect(errors.contains("steps[2].input.x: $.steps.b.output.x reads step 'b', which is not an ancestor of 'c': add it to depends_on (directly or through another step)"))
        #expect(errors.contains("steps[3].input.z: $.steps.b.output.z reads step 'b', which is not an ancestor of 'd': add it to depends_on (directly or through another step)"))
        #expect(errors.contains { $0.hasPrefix("steps[3].when: $.steps.nope.output.q reads unknown step 'nope'") })
        #expect(errors.contains { $0.hasPrefix("steps[4].input.q: '$.stepz.x' is not a valid path: unknown root 'stepz' (did you mean 'steps'?)") })
        #expect(errors.contains("steps[4].input.r: $.item: only a for_each step has an item"))
        #expect(errors.count == 5)
    }

    @Test func humanTaskRules() {
        let errors = definitionErrors(
            """
            workflow_id: w
            steps:
              - { id: a, type: human_task }
              - { id: b, type: human_task, assignee: credit_manager }
              - { id: c, type: human_task, assignee: role:x, on_timeout: escalate }
              - { id: d, type: t, assignee: role:x }
            """
        ).map(\.description)
        #expect(errors.contains { $0.hasPrefix("steps[0].assignee: missing (required for a human_task)") })
        #expect(errors.contains { $0.hasPrefix("steps[1].assignee: 'credit_manager' should name a role or a person") })
        #expect(errors.contains { $0.hasPrefix("steps[2].on_timeout: escalate needs escalate_to") })
        #expect(errors.contains("steps[3].assignee: only human_task steps have an assignee"))
    }

    @Test func badConditionsAreNamed() {
        let errors = definitionErrors(
            """
            workflow_id: w
            steps:
              - { id: a, type: t, when: "$.input.x >" }
              - { id: b, type: t, when: "($.input.x == 1" }
            """
        ).map(\.description)
        #expect(errors == [
            "steps[0].when: '$.input.x >' is not a valid condition: the condition ends where a value was expected",
            "steps[1].when: '($.input.x == 1' is not a valid condition: a '(' is not closed",
        ])
    }

    @Test func filesThatAreNotDefinitionsAreNamedAsSuch() {
        #expect(definitionErrors("\u{FF}\u{FE}garbage").isEmpty == false)
        let notUTF8 = (try? DefinitionLoader.load(Data([0xFF, 0xFE, 0x41]))) == nil
        #expect(notUTF8)
        do {
            _ = try DefinitionLoader.load(Data([0xFF, 0xFE, 0x41]))
        } catch {
            #expect(error.description == "not UTF-8 text")
        }
        #expect(definitionErrors("{\"workflow_id\": ").map(\.description).first?.hasPrefix("not valid JSON") == true)
        #expect(definitionErrors("key: [unclosed\n  - x: {").map(\.description).first?.hasPrefix("neither JSON nor YAML") == true)
        #expect(definitionErrors("just a sentence").map(\.description) == ["expected a workflow definition (an object), found a string"])
        #expect(definitionErrors("[1, 2]").map(\.description) == ["expected a workflow definition (an object), found an array"])
        let nul = definitionErrors("workflow_id: x\u{0}\u{1}")
        #expect(nul.first?.message.contains("NUL") == true)
    }

    @Test(.timeLimit(.minutes(1)))
    func hostileDocumentsAreRefusedOrValidatedInBoundedTime() throws {
        // 100,000 levels of nesting: refused before any parser recurses.
        let deepJSON = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(definitionErrors(deepJSON).map(\.description).first?.hasPrefix("nested more than 128 levels deep") == true)
        let deepInStep = #"{"workflow_id":"w","steps":[{"id":"a","type":"t","input":"# + String(repeating: "{\"a\":", count: 100_000) + "1" + String(repeating: "}", count: 100_000) + "}]}"
        #expect(definitionErrors(deepInStep).first?.message.hasPrefix("nested more than 128 levels deep") == true)
        let deepYAML = "a: " + String(repeating: "[", count: 100_000)
        #expect(definitionErrors(deepYAML).first?.message.hasPrefix("nested more than 128 levels deep") == true)
        let deepBlockYAML = String(repeating: "- ", count: 100_000) + "x"
        #expect(definitionErrors(deepBlockYAML).first?.message.hasPrefix("nested more than 128 levels deep") == true)
        // Aliases that expand exponentially.
        var laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1...9 { laughs += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        #expect(definitionErrors(laughs).first?.message.contains("expands to more than") == true)

        // 10,000 independent steps, and a 10,000-step chain in which each step reads its predecessor.
        let wide = (0..<10_000).map { #"{"id":"s\#($0)","type":"t"}"# }.joined(separator: ",")
        let w1 = try DefinitionLoader.load(Data(#"{"workflow_id":"wide","steps":[\#(wide)]}"#.utf8))
        #expect(w1.steps.count == 10_000)
        let chain = (0..<10_000).map { i in
            i == 0 ? #"{"id":"s0","type":"t"}"# : #"{"id":"s\#(i)","type":"t","depends_on":["s\#(i - 1)"],"input":{"x":"$.steps.s\#(i - 1).output.x","first":"$.steps.s0.output.y"}}"#
        }.joined(separator: ",")
        let w2 = try DefinitionLoader.load(Data(#"{"workflow_id":"chain","steps":[\#(chain)]}"#.utf8))
        #expect(w2.topologicalOrder.count == 10_000)
        // A 10,000-step cycle is found without recursion too.
        let ring = (0..<10_000).map { #"{"id":"s\#($0)","type":"t","depends_on":["s\#(($0 + 9_999) % 10_000)"]}"# }.joined(separator: ",")
        let ringErrors = definitionErrors(#"{"workflow_id":"ring","steps":[\#(ring)]}"#)
        #expect(ringErrors.count == 1)
        #expect(ringErrors.first?.message.hasPrefix("cycle: s0 -> s1 -> s2") == true)
        // More than the limit is refused with a clear error.
        let tooMany = (0...10_000).map { #"{"id":"s\#($0)","type":"t"}"# }.joined(separator: ",")
        #expect(definitionErrors(#"{"workflow_id":"big","steps":[\#(tooMany)]}"#).map(\.description) == ["steps: 10001 steps, more than the limit of 10000"])
    }

    @Test func graphsDrawEveryStepAndEdge() throws {
        let w = try DefinitionLoader.load(Data(Self.seed.utf8))
        let dot = GraphRenderer.dot(w)
        #expect(dot.contains("\"validate\" -> \"reserve\";"))
        #expect(dot.contains("\"ship\" -> \"notify\";"))
        let mermaid = GraphRenderer.mermaid(w)
        #expect(mermaid.hasPrefix("flowchart LR"))
        #expect(mermaid.contains("s0 --> s1"))
        let text = GraphRenderer.text(try workflow("""
            workflow_id: w
            steps:
              - { id: a, type: t }
              - { id: b, type: t }
              - { id: c, type: t }
              - { id: d, type: t, depends_on: [a, b, c] }
            """))
        #expect(text == """
            w v1: 4 steps
            stage 1
              a [t]
              b [t]
              c [t]
            stage 2
              d [t] <- a, b, c
            """)
    }
}

@Suite("Paths and conditions")
struct PathAndConditionTests {
    let context = PathContext(
        instanceID: "i-9", workflowID: "w", input: ["order_id": "o-1", "amount": 1500, "items": [["sku": "a"], ["sku": "b"]], "vip": true],
        item: ["sku": "z"], index: 4,
        stepOutput: { $0 == "reserve" ? ["reservation_id": "r-7", "lines": [1, 2, 3]] : nil })

    func value(_ path: String) throws -> JSON? { try ValuePath(parsing: path).resolve(in: context) }

    @Test func pathsResolve() throws {
        #expect(try value("$.input.order_id") == "o-1")
        #expect(try value("$.input.items[1].sku") == "b")
        #expect(try value("$.steps.reserve.output.reservation_id") == "r-7")
        #expect(try value("$.steps.reserve.output.lines[2]") == 3)
        #expect(try value("$.item.sku") == "z")
        #expect(try value("$.index") == 4)
        #expect(try value("$.instance.id") == "i-9")
        #expect(try value("$.input.missing") == nil)
        #expect(try value("$.input.items[9]") == nil)
        #expect(try value("$.steps.charge.output") == nil)
    }

    @Test func badPathsSayWhy() {
        for (text, reason) in [
            ("input.x", "a path starts with '$.'"), ("$.", "a name is missing"), ("$.input[x]", "an index is written"),
            ("$.steps.reserve.reservation_id", "a step's value is referenced as $.steps.<step id>.output"),
            ("$.instance.name", "only $.instance.id"),
        ] {
            #expect(throws: ValuePath.ParseError.self) { try ValuePath(parsing: text) }
            do { _ = try ValuePath(parsing: text) } catch { #expect(error.reason.contains(reason), "\(text): \(error.reason)") }
        }
    }

    @Test func templatesRender() {
        let template: JSON = ["id": "$.input.order_id", "res": "$.steps.reserve.output.reservation_id", "fixed": 7, "dollar": "$$5", "nested": ["$.input.amount", "$.input.nope"]]
        #expect(InputTemplate.render(template, in: context) == ["id": "o-1", "res": "r-7", "fixed": 7, "dollar": "$5", "nested": [1500, nil]])
    }

    @Test func conditionsEvaluate() throws {
        func holds(_ text: String) throws -> Bool { try Condition(parsing: text).evaluate(in: context) }
        #expect(try holds("$.input.amount > 1000"))
        #expect(try !holds("$.input.amount > 1000 && $.input.order_id == 'o-2'"))
        #expect(try holds("$.input.amount >= 1500 and ($.input.vip or $.input.missing)"))
        #expect(try holds("!$.input.missing"))
        #expect(try holds("not ($.input.amount < 10)"))
        #expect(try holds("$.steps.reserve.output.reservation_id != null"))
        #expect(try holds("$.input.order_id < \"o-2\""))
        #expect(try !holds("$.input.order_id > 5"))  // mismatched types never order
        #expect(try holds("$.input.items"))
        #expect(throws: Condition.ParseError.self) { try Condition(parsing: String(repeating: "(", count: 1000) + "true" + String(repeating: ")", count: 1000)) }
        #expect(throws: Condition.ParseError.self) { try Condition(parsing: "$.input.a == == 1") }
    }
}

import Foundation

/// Draws a workflow's DAG: Graphviz DOT, Mermaid, or plain text for a terminal.
public enum GraphRenderer {
    public static func dot(_ workflow: Workflow) -> String {
        var lines = ["digraph \(quote(workflow.id)) {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for step in workflow.steps {
            var label = "\(step.id)\\n(\(step.isHumanTask ? step.humanTask?.assignee ?? "" : step.hasWorker ? step.pool : step.summary))"
            if step.forEach != nil { label += "\\nfor each" }
            if step.when != nil { label += "\\nwhen ..." }
            let shape = step.isHumanTask ? ", shape=hexagon" : step.hasWorker ? "" : ", shape=ellipse"
            lines.append("  \(quote(step.id)) [label=\(quote(label))\(shape)];")
        }
        for (i, deps) in workflow.dependencies.enumerated() {
            for d in deps { lines.append("  \(quote(workflow.steps[d].id)) -> \(quote(workflow.steps[i].id));") }
        }
        for step in workflow.steps {
            if let c = step.compensation {
                lines.append("  \(quote(step.id + "__undo")) [label=\(quote("undo \(step.id)\\n(\(c.pool))")), style=dashed];")
                lines.append("  \(quote(step.id)) -> \(quote(step.id + "__undo")) [style=dashed, arrowhead=empty];")
            }
        }
        lines.append("}")
        return lines.joined(separator: "\n")
    }

    public static func mermaid(_ workflow: Workflow) -> String {
        var lines = ["flowchart LR"]
        for (i, step) in workflow.steps.enumerated() {
            let label = "\(step.id)<br/>\(step.isHumanTask ? step.humanTask?.assignee ?? "" : step.hasWorker ? step.pool : step.summary)"
            lines.append(step.isHumanTask ? "  s\(i){{\"\(escape(label))\"}}" : "  s\(i)[\"\(escape(label))\"]")
        }
        for (i, deps) in workflow.dependencies.enumerated() {
            for d in deps { lines.append("  s\(d) --> s\(i)") }
        }
        return lines.joined(separator: "\n")
    }

    /// Steps by stage (the longest chain of dependencies before them): all steps of a stage can run in parallel.
    public static func text(_ workflow: Workflow) -> String {
        var stage = Array(repeating: 0, count: workflow.steps.count)
        for s in workflow.topologicalOrder {
            stage[s] = (workflow.dependencies[s].map { stage[$0] + 1 }.max()) ?? 0
        }
        var lines = ["\(workflow.id) v\(workflow.version): \(workflow.steps.count) step\(workflow.steps.count == 1 ? "" : "s")"]
        let stages = (stage.max() ?? -1) + 1
        for k in 0..<stages {
            lines.append("stage \(k + 1)")
            for s in workflow.topologicalOrder where stage[s] == k {
                let step = workflow.steps[s]
                var text = "  \(step.id) [\(step.summary)]"
                let deps = workflow.dependencies[s].map { workflow.steps[$0].id }
                if !deps.isEmpty { text += " <- \(deps.joined(separator: ", "))" }
                var notes: [String] = []
                if let w = step.when { notes.append("when \(w)") }
                if let f = step.forEach { notes.append("for each \(f.items)\(f.maxConcurrency.map { ", \($0) at a time" } ?? "")") }
                if let c = step.compensation { notes.append("undo: \(c.pool)") }
                if !notes.isEmpty { text += "  (\(notes.joined(separator: "; ")))" }
                lines.append(text)
            }
        }
        return lines.joined(separator: "\n")
    }

    static func quote(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func escape(_ s: String) -> String { s.replacingOccurrences(of: "\"", with: "#quot;") }
}

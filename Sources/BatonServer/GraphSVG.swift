import BatonCore
import Foundation

/// Draws a workflow's DAG as SVG: steps in columns by depth (a step sits right of everything it depends on),
/// edges from each dependency, human tasks with a rounded person-shaped tag, compensations noted under their
/// step. Given an instance's state, each step is coloured by its status and compensated steps are marked.
public enum GraphSVG {
    static let boxWidth = 170, boxHeight = 52, columnGap = 60, rowGap = 22, margin = 16

    public static func render(_ workflow: Workflow, state: InstanceState?) -> String {
        let n = workflow.steps.count
        var depth = Array(repeating: 0, count: n)
        var changed = true
        var passes = 0
        while changed, passes <= n {  // a validated DAG settles within n passes, whatever the order of its steps
            changed = false
            passes += 1
            for i in 0..<n {
                for d in workflow.dependencies[i] where depth[d] + 1 > depth[i] {
                    depth[i] = depth[d] + 1
                    changed = true
                }
            }
        }
        let columns = (depth.max() ?? 0) + 1
        var rows = Array(repeating: 0, count: columns)
        var position = Array(repeating: (x: 0, y: 0), count: n)
        for i in 0..<n {
            let c = depth[i]
            position[i] = (margin + c * (boxWidth + columnGap), margin + rows[c] * (boxHeight + rowGap))
            rows[c] += 1
        }
        let width = margin * 2 + columns * boxWidth + (columns - 1) * columnGap
        let height = margin * 2 + (rows.max() ?? 1) * (boxHeight + rowGap) - rowGap + 14
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \(width) \(height)" width="\(width)" height="\(height)" role="img" \
            aria-label="\(escape(workflow.id)) v\(workflow.version)" font-family="system-ui, sans-serif" font-size="12">
            <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">\
            <path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>

            """
        for i in 0..<n {
            for d in workflow.dependencies[i] {
                let from = position[d], to = position[i]
                let x1 = from.x + boxWidth, y1 = from.y + boxHeight / 2, x2 = to.x, y2 = to.y + boxHeight / 2
                let mid = (x1 + x2) / 2
                out += "<path d=\"M\(x1),\(y1) C\(mid),\(y1) \(mid),\(y2) \(x2 - 2),\(y2)\" fill=\"none\" stroke=\"#9ca3af\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>\n"
            }
        }
        for (i, step) in workflow.steps.enumerated() {
            let (x, y) = position[i]
            let status = state.map { statusName($0, i) } ?? "definition"
            let (fill, stroke) = colours(status)
            let radius = step.hasWorker ? 6 : 16
            let dash = status == "skipped" ? " stroke-dasharray=\"4 3\"" : ""
            out += "<g class=\"step step-\(status)\" data-step=\"\(escape(step.id))\" data-status=\"\(status)\">"
            out += "<title>\(escape(step.id)): \(status)</title>"
            out += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(boxWidth)\" height=\"\(boxHeight)\" rx=\"\(radius)\" fill=\"\(fill)\" stroke=\"\(stroke)\" stroke-width=\"2\"\(dash)/>"
            out += "<text x=\"\(x + 10)\" y=\"\(y + 20)\" font-weight=\"600\" fill=\"#111827\">\(escape(clip(step.id, 22)))</text>"
            let sub = step.isHumanTask ? "for \(step.humanTask?.assignee ?? "")" : step.hasWorker ? step.pool : step.summary
            var detail = clip(sub, 26)
            if let state, i < state.steps.count {
                let attempts = state.steps[i].units.map(\.attempt).max() ?? 0
                if attempts > 1 { detail = clip(sub, 18) + " ×\(attempts)" }
            }
            out += "<text x=\"\(x + 10)\" y=\"\(y + 38)\" fill=\"#374151\">\(escape(detail))</text>"
            if let c = step.compensation {
                let compensated = state.map { i < $0.steps.count && $0.steps[i].units.contains { $0.compensation == .done } } ?? false
                let mark = compensated ? "↺ compensated" : "↺ \(clip(c.type, 20))"
                out += "<text x=\"\(x + 4)\" y=\"\(y + boxHeight + 12)\" font-size=\"10\" fill=\"\(compensated ? "#b45309" : "#6b7280")\">\(escape(mark))</text>"
            }
            out += "</g>\n"
        }
        out += "</svg>\n"
        return out
    }

    /// A step's status for colouring: pending, running, waiting (an open task), completed, failed, skipped, compensated.
    static func statusName(_ state: InstanceState, _ i: Int) -> String {
        guard i < state.steps.count else { return "pending" }
        let step = state.steps[i]
        if step.units.contains(where: { $0.compensation == .done }) { return "compensated" }
        if step.units.contains(where: { $0.compensation == .running || $0.compensation == .backoff }) { return "compensating" }
        switch step.status {
        case .pending: return "pending"
        case .active: return step.units.contains { $0.task != nil } ? "waiting" : "running"
        case .completed: return "completed"
        case .failed: return "failed"
        case .skipped: return "skipped"
        }
    }

    static func colours(_ status: String) -> (String, String) {
        switch status {
        case "completed": ("#dcfce7", "#16a34a")
        case "running": ("#dbeafe", "#2563eb")
        case "waiting": ("#fef9c3", "#ca8a04")
        case "failed": ("#fee2e2", "#dc2626")
        case "compensated", "compensating": ("#ffedd5", "#ea580c")
        case "skipped": ("#f3f4f6", "#9ca3af")
        case "pending": ("#ffffff", "#9ca3af")
        default: ("#f9fafb", "#4b5563")
        }
    }

    static func clip(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n - 1)) + "…" }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

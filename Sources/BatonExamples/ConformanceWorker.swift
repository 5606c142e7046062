import BatonCore
import BatonWorker

/// The Swift SDK's conformance worker (docs/conformance.md): the handler `baton conformance` drives, which
/// does what the command's `input` says. `baton conformance-worker --pool P` runs it.
public enum ConformanceWorker {
    public static let handler: StepHandler = { ctx in try await handle(ctx) }

    static func handle(_ ctx: StepContext) async throws -> JSON {
        let input = ctx.input
        guard let op = input["op"]?.stringValue else {
            throw StepFailure("the input has no 'op' (echo, fail, output_bytes, sleep or heartbeat)", retryable: false)
        }
        switch op {
        case "echo":
            return echo(ctx)
        case "fail":
            throw StepFailure(input["error"]?.stringValue ?? "failed", retryable: input["retryable"]?.boolValue ?? true)
        case "output_bytes":
            guard let bytes = input["bytes"]?.intValue, bytes >= 0 else { throw StepFailure("output_bytes needs 'bytes', a count from 0", retryable: false) }
            return ["data": .string(String(repeating: "x", count: bytes))]
        case "sleep":
            guard let ms = input["ms"]?.intValue, ms >= 0 else { throw StepFailure("sleep needs 'ms', milliseconds from 0", retryable: false) }
            try await Task.sleep(for: .milliseconds(ms))
            return echo(ctx)
        case "heartbeat":
            // One heartbeat (sent before this returns), then as sleep.
            await ctx.heartbeat(["op": "heartbeat"])
            let ms = max(0, input["ms"]?.intValue ?? 0)
            try await Task.sleep(for: .milliseconds(ms))
            return echo(ctx)
        default:
            throw StepFailure("unknown op '\(op)' (echo, fail, output_bytes, sleep or heartbeat)", retryable: false)
        }
    }

    static func echo(_ ctx: StepContext) -> JSON {
        ["echo": ctx.input["value"] ?? .null, "attempt": .number(Double(ctx.attempt)), "idempotency_key": .string(ctx.idempotencyKey)]
    }
}

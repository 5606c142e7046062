import BatonCore
import BatonWorker
import Foundation

/// Workers for the examples: they stand in for real services (inventory, payments, shipping), answer
/// deterministically from their input, and fail on request so that retries and compensations can be seen:
/// an order whose id contains `fail-charge` has its card declined on every attempt.
public enum ExampleWorkers {
    /// Handlers by worker pool.
    public static let handlers: [String: StepHandler] = [
        "service_call": { ctx in try await simulate(ctx, as: ctx.step) },
        "notification": { ctx in try await simulate(ctx, as: "notify") },
        "orders.validate": { ctx in try await simulate(ctx, as: "validate") },
        "inventory.reserve": { ctx in try await simulate(ctx, as: "reserve") },
        "inventory.release": { ctx in try await simulate(ctx, as: "release") },
        "payments.charge": { ctx in try await simulate(ctx, as: "charge") },
        "payments.refund": { ctx in try await simulate(ctx, as: "refund") },
        "shipping.create": { ctx in try await simulate(ctx, as: "ship") },
        "shipping.cancel": { ctx in try await simulate(ctx, as: "cancel_shipment") },
        "notifications.email": { ctx in try await simulate(ctx, as: "notify") },
        // Loan processing (examples/loan-processing.yaml).
        "kyc.verify": { ctx in try await simulate(ctx, as: "verify") },
        "bureau.score": { ctx in try await simulate(ctx, as: "score") },
        "core_banking.open_loan_account": { ctx in try await simulate(ctx, as: "open_account") },
        "core_banking.close_loan_account": { ctx in try await simulate(ctx, as: "close_account") },
        "payments.disburse": { ctx in try await simulate(ctx, as: "disburse") },
        "payments.claw_back": { ctx in try await simulate(ctx, as: "claw_back") },
    ]

    static func simulate(_ ctx: StepContext, as action: String) async throws -> JSON {
        let input = ctx.input
        let orderID = input["order_id"]?.stringValue ?? input["input"]?["order_id"]?.stringValue ?? ""
        // A plain byte search: Foundation's `contains` on strings goes through NSString, and the standard library's
        // generic `firstRange(of:)` is slower still; at 10,000 steps/s either was a quarter of the workers' time.
        let id = Array(orderID.utf8)
        func has(_ text: String) -> Bool {
            let needle = Array(text.utf8)
            guard !needle.isEmpty, id.count >= needle.count else { return false }
            outer: for start in 0...(id.count - needle.count) {
                for k in 0..<needle.count where id[start + k] != needle[k] { continue outer }
                return true
            }
            return false
        }
        if has("slow") {
            try await Task.sleep(for: .seconds(300))  // a service that hangs (to show redelivery when a worker dies)
        }
        if !ctx.isCompensation, has("fail-\(action)") || has("fail-\(ctx.step)") {
            throw StepFailure("\(action) declined for \(ctx.instanceID) (attempt \(ctx.attempt))", retryable: true)
        }
        // Derived from the idempotency key: every attempt of a step gets the same ids, as a real service would.
        let hash = ctx.idempotencyKey.utf8.reduce(UInt64(1_469_598_103_934_665_603)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        let token = String(hash % 1_000_000)
        switch action {
        case "validate": return ["valid": true]
        case "reserve": return ["reservation_id": .string("res-\(token)")]
        case "charge": return ["payment_id": .string("pay-\(token)"), "amount": input["amount"] ?? .null]
        case "ship": return ["shipment_id": .string("shp-\(token)"), "tracking_number": .string("TRK\(token)")]
        case "notify": return ["sent": true]
        case "verify": return ["verified": true]
        // A credit score from 580 to 819, the same for every attempt of the instance's step.
        case "score": return ["score": .number(Double(580 + hash % 240))]
        case "open_account": return ["account_id": .string("acc-\(token)")]
        case "disburse": return ["transfer_id": .string("trf-\(token)")]
        default: return ["done": .string(action)]
        }
    }
}

import BatonClient
import BatonCore
import BatonRuntime
import BatonWire
import Logging
import Testing

/// The README's client example compiles as written (it is not run: it needs a broker).
@Suite struct ReadmeSnippetTests {
    @Test func theClientExampleCompiles() {
        let example: @Sendable (Logger) async throws -> Void = { logger in
            let client = try BatonClient(client: .fromEnvironment(), names: TopicNames(namespace: "baton"), logger: logger)
            switch try await client.startAndWait(workflowID: "order_fulfillment", input: ["order_id": "o-17"], instanceID: "order-o-17") {
            case .created(let state), .exists(let state): print(state.instanceID, state.status)
            case .conflict(let other): print("order-o-17 was started with another input:", other.input)
            }
            await client.close()
        }
        _ = example
    }
}

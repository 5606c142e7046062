import BatonMonitoring
import BatonRuntime
import BatonTestSupport
import Logging
import Prometheus
import Testing

/// A listener whose port is taken fails with the address and the option that sets it.
@Suite struct ListenerTests {
    @Test func aPortInUseIsNamedWithItsOption() async throws {
        let (ports, portsIn) = AsyncStream.makeStream(of: Int.self)
        let logger = TestKafka.logger
        let first = MonitoringEndpoint(
            host: "127.0.0.1", port: 0, component: "test", registry: PrometheusCollectorRegistry(), logger: logger, ready: { true },
            onRunning: { portsIn.yield($0) })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await first.run() }
            defer { group.cancelAll() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let second = MonitoringEndpoint(
                host: "127.0.0.1", port: port, component: "test", registry: PrometheusCollectorRegistry(), logger: logger, ready: { true })
            let error = await #expect(throws: ListenError.self) { try await second.run() }
            #expect(error?.port == port)
            #expect(error?.description.contains("cannot listen on 127.0.0.1:\(port) (--metrics-port)") == true)
        }
    }
}

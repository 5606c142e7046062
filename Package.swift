// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Baton",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "baton", targets: ["baton"]),
        .library(name: "BatonCore", targets: ["BatonCore"]),
        .library(name: "BatonKafka", targets: ["BatonKafka"]),
        .library(name: "BatonTopics", targets: ["BatonTopics"]),
        .library(name: "BatonWire", targets: ["BatonWire"]),
        .library(name: "BatonRuntime", targets: ["BatonRuntime"]),
        .library(name: "BatonWorker", targets: ["BatonWorker"]),
        .library(name: "BatonClient", targets: ["BatonClient"]),
        .library(name: "BatonMonitoring", targets: ["BatonMonitoring"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.8.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        // OTLP over HTTP only: the gRPC trait would bring grpc-swift and a second BoringSSL.
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context", from: "1.0.0"),
    ],
    targets: [
        // librdkafka through pkg-config; `scripts/setup` installs a version >= 2.1.
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        // Pure core: definitions, validation, the saga state machine. No I/O, no clock.
        .target(
            name: "BatonCore",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: strict
        ),
        // Kafka records as values (topic, partition, key, value, headers) and the trace context they carry. Pure.
        .target(
            name: "BatonRecords",
            dependencies: [.product(name: "Tracing", package: "swift-distributed-tracing")],
            swiftSettings: strict
        ),
        // The only module that touches C: a Swift 6 wrapper over librdkafka.
        .target(
            name: "BatonKafka",
            dependencies: ["CRdKafka", "BatonRecords", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // Declared engine topics and `topics apply`. The specs (`topics/` is a link to Specs/) are built into the
        // binary, so that `baton topics apply` works from any folder (and in the container image).
        .target(
            name: "BatonTopics",
            dependencies: [
                "BatonCore", "BatonKafka",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            resources: ["alerts", "deadletter", "definitions", "events", "mailboxes", "notifications", "outputs", "state", "tasks"].map {
                .embedInCode("Specs/\($0).yaml")
            },
            swiftSettings: strict
        ),
        // The wire protocol: what every record on every engine topic looks like. Pure.
        // Signatures of authority records (Ed25519) and result tokens (HMAC) through swift-crypto.
        .target(name: "BatonWire", dependencies: ["BatonCore", "BatonRecords", .product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
        // The coordinator's batch as a plan with no I/O: an events partition's instances and mailboxes, and what a
        // batch of events changes and writes. No Kafka client, no async API.
        .target(
            name: "BatonPlanning",
            dependencies: [
                "BatonCore", "BatonWire", "BatonRecords",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The saga coordinator: events in, commands, state and effects out, in Kafka transactions.
        .target(
            name: "BatonCoordinator",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime", "BatonPlanning",
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // What the coordinator, the workers and the client share over Kafka (dead letters, command topics,
        // client settings from the environment).
        .target(
            name: "BatonRuntime",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonTopics",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // What a process shows of itself: /metrics (Prometheus), /healthz and /readyz on a port of its own, and
        // the OTLP exporter of its spans. Only executables bootstrap it.
        .target(
            name: "BatonMonitoring",
            dependencies: [
                "BatonRuntime",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The worker SDK and the client (start, status, tasks, operators).
        .target(
            name: "BatonWorker",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonRuntime",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "BatonClient",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // What the command line's operator commands are made of: tail, watch, the offsets audit, record formatting.
        .target(
            name: "BatonOperatorTools",
            dependencies: [
                "BatonClient", "BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The conformance kit (`baton conformance`): drives a worker in any language through the wire protocol.
        .target(
            name: "BatonConformance",
            dependencies: [
                "BatonClient", "BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // `baton triggers`: business topics read in transactions, their records turned into starts and into
        // records for the mailboxes of waiting instances.
        .target(
            name: "BatonTriggers",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The read model: the engine's topics followed into indexed views, with a stream of changes.
        .target(
            name: "BatonReadModel",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonRuntime",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // `baton serve`: the HTTP API, authentication and roles, and the web console.
        .target(
            name: "BatonServer",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonRuntime", "BatonReadModel", "BatonClient",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.embedInCode("Resources/openapi.yaml"), .embedInCode("Resources/console.css"), .embedInCode("Resources/console.js")],
            swiftSettings: strict
        ),
        // Workers for the examples (stand-ins for real services).
        .target(name: "BatonExamples", dependencies: ["BatonCore", "BatonWorker"], swiftSettings: strict),
        // Helpers shared by the test targets: broker address, unique names, waiting with a deadline.
        .target(
            name: "BatonTestSupport",
            dependencies: ["BatonKafka", .product(name: "Logging", package: "swift-log")],
            path: "Tests/BatonTestSupport",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "baton",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonTopics", "BatonCoordinator", "BatonWorker", "BatonClient", "BatonConformance", "BatonOperatorTools",
                "BatonExamples", "BatonWire", "BatonReadModel", "BatonServer", "BatonMonitoring", "BatonRuntime", "BatonTriggers",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "BatonCoreTests",
            dependencies: [
                "BatonCore", "BatonWire",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            // Read from the source tree by path (`WireCompatibilityTests.fixtures`), not bundled.
            exclude: ["WireFixtures"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "BatonRuntimeIntegrationTests",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonTopics", "BatonWire", "BatonRuntime", "BatonCoordinator", "BatonWorker", "BatonClient",
                "BatonConformance", "BatonTestSupport", "BatonReadModel", "BatonServer", "BatonMonitoring", "BatonTriggers",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            swiftSettings: strict
        ),
        // Tests that need no broker (a fast target: it runs in seconds).
        .testTarget(
            name: "BatonUnitTests",
            dependencies: [
                "baton", "BatonClient", "BatonCoordinator", "BatonCore", "BatonKafka", "BatonMonitoring", "BatonOperatorTools", "BatonPlanning", "BatonRuntime",
                "BatonServer", "BatonTestSupport", "BatonWire", "BatonWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "BatonKafkaIntegrationTests",
            dependencies: ["BatonKafka", "BatonTopics", "BatonTestSupport"],
            swiftSettings: strict
        ),
    ]
)

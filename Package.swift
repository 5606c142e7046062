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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
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
        // The only module that touches C: a Swift 6 wrapper over librdkafka.
        .target(
            name: "BatonKafka",
            dependencies: ["CRdKafka", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // Declared engine topics and `topics apply`.
        .target(
            name: "BatonTopics",
            dependencies: [
                "BatonCore", "BatonKafka",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The wire protocol: what every record on every engine topic looks like. Pure.
        .target(name: "BatonWire", dependencies: ["BatonCore"], swiftSettings: strict),
        // The saga coordinator: events in, commands, state and effects out, in Kafka transactions.
        .target(
            name: "BatonCoordinator",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime",
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // What the coordinator, the workers and the client share over Kafka (dead letters, command topics,
        // client settings from the environment).
        .target(
            name: "BatonRuntime",
            dependencies: ["BatonCore", "BatonKafka", "BatonWire", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // The worker SDK and the client (start, status, tasks, operators).
        .target(
            name: "BatonWorker",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonWire", "BatonRuntime",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "BatonClient",
            dependencies: ["BatonCore", "BatonKafka", "BatonWire", "BatonTopics", "BatonRuntime", .product(name: "Logging", package: "swift-log")],
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
                "BatonCore", "BatonKafka", "BatonTopics", "BatonCoordinator", "BatonWorker", "BatonClient", "BatonExamples", "BatonWire",
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
                "BatonCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "BatonRuntimeIntegrationTests",
            dependencies: [
                "BatonCore", "BatonKafka", "BatonTopics", "BatonWire", "BatonRuntime", "BatonCoordinator", "BatonWorker", "BatonClient",
                "BatonTestSupport",
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

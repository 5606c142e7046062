import CRdKafka

/// The librdkafka Baton is loaded with, and the oldest one it runs on.
///
/// 2.10.0 is the floor: before it, a topic that comes back under a new topic id (a wiped or replaced cluster, a
/// topic deleted and created again) corrupts librdkafka's metadata cache and every client dies of SIGSEGV within
/// seconds, with nothing logged (upstream issues #4778 and #4964, fixed in 2.10.0). Before 2.1 it also mis-reads
/// KIP-482 tagged fields and cannot talk to current brokers at all. The binary may be linked against one
/// librdkafka and loaded with another (an older `librdkafka.so.1` earlier on the library path), so the check is
/// made at run time, when the first client is created.
public struct LibrdkafkaVersion: Sendable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int

    public init(major: Int, minor: Int, patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// From `rd_kafka_version()`'s `0xMMmmrrxx` (major, minor, revision, pre-release).
    public init(hex: Int32) {
        let v = UInt32(bitPattern: hex)
        self.init(major: Int(v >> 24 & 0xff), minor: Int(v >> 16 & 0xff), patch: Int(v >> 8 & 0xff))
    }

    public static let minimum = LibrdkafkaVersion(major: 2, minor: 10, patch: 0)
    /// The library this process loaded.
    public static var loaded: LibrdkafkaVersion { LibrdkafkaVersion(hex: rd_kafka_version()) }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (a: LibrdkafkaVersion, b: LibrdkafkaVersion) -> Bool {
        (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch)
    }

    /// Throws when `version` is older than `minimum`, naming both and what to do.
    public static func check(_ version: LibrdkafkaVersion = loaded) throws {
        guard version < minimum else { return }
        throw KafkaError(
            code: .invalidConfiguration,
            message: "librdkafka \(version) is loaded, and Baton needs \(minimum) or newer (older releases crash when a topic comes back "
                + "under a new id, librdkafka #4778/#4964): run scripts/setup, or put a newer librdkafka.so.1 first on the library path")
    }
}

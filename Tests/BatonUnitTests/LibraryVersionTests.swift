import BatonKafka
import Testing

@Suite("librdkafka's version")
struct LibraryVersionTests {
    @Test func rdKafkaVersionsHexFormIsReadAsMajorMinorPatch() {
        #expect(LibrdkafkaVersion(hex: 0x020e_02ff).description == "2.14.2")
        #expect(LibrdkafkaVersion(hex: 0x0208_00ff) < LibrdkafkaVersion(hex: 0x020a_0000))
    }

    @Test func aLibraryOlderThanTheMinimumIsRefusedNamingBothVersions() throws {
        let error = #expect(throws: KafkaError.self) { try LibrdkafkaVersion.check(LibrdkafkaVersion(major: 2, minor: 8, patch: 0)) }
        let text = "\(error.map { "\($0)" } ?? "")"
        #expect(text.contains("2.8.0") && text.contains("2.10.0") && text.contains("scripts/setup"))
        try LibrdkafkaVersion.check(LibrdkafkaVersion(major: 2, minor: 10, patch: 0))
    }

    @Test func theLoadedLibraryIsAtLeastTheMinimum() throws {
        #expect(LibrdkafkaVersion.loaded >= LibrdkafkaVersion.minimum, "loaded \(LibrdkafkaVersion.loaded)")
        #expect(librdkafkaVersion.hasPrefix(LibrdkafkaVersion.loaded.description))
    }
}

import ArgumentParser
import BatonCore
import BatonTestSupport
import Foundation
import Logging
import Testing

@testable import baton

/// What a new user types wrong on the command line gets an error that names it, with a non-zero status; none
/// of these needs a broker.
@Suite struct CommandLineTests {
    /// Runs the built `baton` with `arguments`; its exit status and what it wrote. The reading and waiting happen
    /// on a Dispatch thread: blocking one of the two threads of Swift's cooperative pool (on a 2-core machine)
    /// would stall every other test of the process meanwhile.
    func run(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = TestBinary.baton
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                continuation.resume(returning: output)
            }
        }
        return (process.terminationStatus, output)
    }

    @Test func anUnknownCommandWithHelpIsAnErrorNotTheRootHelp() async throws {
        let (status, output) = try await run(["frobnicate", "--help"])
        #expect(status == 64)
        #expect(output.contains("'frobnicate' is not a command of 'baton'"))
        #expect(output.contains("instances"), "the commands there are are listed")
        let nested = try await run(["topics", "frobnicate", "--help"])
        #expect(nested.status == 64)
        #expect(nested.output.contains("'frobnicate' is not a command of 'baton topics'"))
    }

    /// Services log what they do unless told otherwise; an explicit `--log-level error` is kept (it used to be
    /// taken for the default and raised to info).
    @Test func aServiceLogsAtInfoUnlessALevelIsGiven() throws {
        let unset = try ConnectionOptions.parse([])
        #expect(unset.makeLogger("t", default: .info).logLevel == .info)
        #expect(unset.makeLogger("t").logLevel == .error, "a one-shot command logs its errors only")
        let quiet = try ConnectionOptions.parse(["--log-level", "error"])
        #expect(quiet.makeLogger("t", default: .info).logLevel == .error)
        let loud = try ConnectionOptions.parse(["--log-level", "debug"])
        #expect(loud.makeLogger("t", default: .notice).logLevel == .debug)
    }

    @Test func knownCommandsAndHelpStillWork() async throws {
        #expect(Baton.unknownCommand(in: ["instances", "list", "--status", "failed"]) == nil)
        #expect(Baton.unknownCommand(in: ["status", "order-1"]) == nil, "a command's own argument is not a command")
        #expect(Baton.unknownCommand(in: ["help", "topics"]) == nil)
        #expect(Baton.unknownCommand(in: ["--help"]) == nil)
        let (status, output) = try await run(["topics", "--help"])
        #expect(status == 0)
        #expect(output.contains("USAGE"))
    }

    @Test func statusTakesACommaListAndNamesAnUnknownOne() async throws {
        let list = try Instances.List.parse(["--status", "failed,suspended", "--status", "running"])
        #expect(list.status == [.failed, .suspended, .running])
        let (status, output) = try await run(["instances", "list", "--status", "failed,bogus"])
        #expect(status == 64)
        #expect(output.contains("unknown status 'bogus'"))
    }
}

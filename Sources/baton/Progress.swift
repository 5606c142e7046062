import Foundation

/// Runs `body` and, until it returns, writes what `report` says to standard error every `interval` (nothing
/// when it says nil): long commands (bench, demo) show that they are getting on.
func withProgress<T: Sendable>(every interval: Duration, _ report: @escaping @Sendable () -> String?, _ body: @escaping @Sendable () async -> T) async -> T {
    await withTaskGroup(of: T?.self) { group in
        group.addTask { await body() }
        group.addTask {
            while true {
                do { try await Task.sleep(for: interval) } catch { return nil }  // cancelled: the body is done
                if let line = report() { FileHandle.standardError.write(Data("\(line)\n".utf8)) }
            }
        }
        var result: T?
        while result == nil, let next = await group.next() { result = next }
        group.cancelAll()
        return result!
    }
}

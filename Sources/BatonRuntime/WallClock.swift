import Foundation

/// This process's wall clock in milliseconds since the epoch: the one place Baton's services read it (the pure
/// core takes time as an argument; coordinators and triggers take it through their configuration's `clock`).
public enum WallClock {
    public static func millis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}

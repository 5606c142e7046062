import Testing

/// Suites that start processes, freeze brokers or load the machine hard run one after the other (and each is
/// serialized inside): side by side on a 2-core machine, the timing of one would be what another tests.
/// The rest of the suites run in parallel with them.
@Suite("One at a time: processes, faults and load", .serialized)
struct OneAtATime {}

import CRdKafka

/// The process's heap, where the engine needs a word with the system allocator.
public enum ProcessMemory {
    /// Gives freed heap pages back to the system. glibc keeps the pages of a large transient working set (a
    /// coordinator's rebuild reads every snapshot of its partitions) until told; the process then stays that
    /// large although the memory is free.
    public static func releaseFreed() { _ = baton_release_free_memory() }
}

import BatonClient
import BatonCore
import BatonKafka
import BatonTestSupport
import BatonWire
import BatonWorker
import Foundation
import Testing

/// A shared library that shifts this process's wall clock (CLOCK_REALTIME, gettimeofday, time) by
/// `BATON_TEST_CLOCK_SHIFT_MS`, loaded with LD_PRELOAD into one coordinator: its clock alone jumps, as a host's
/// does when NTP is off or a VM is restored. (Debian's libfaketime breaks Swift's argument parsing here.)
enum ClockShim {
    static let source = #"""
        #define _GNU_SOURCE
        #include <pthread.h>
        #include <threads.h>
        #include <dlfcn.h>
        #include <stdlib.h>
        #include <sys/time.h>
        #include <time.h>

        static long long shift_ms(void) {
            const char *s = getenv("BATON_TEST_CLOCK_SHIFT_MS");
            return s ? atoll(s) : 0;
        }

        static void shift(struct timespec *ts) {
            long long ns = (long long)ts->tv_nsec + (shift_ms() % 1000) * 1000000LL;
            ts->tv_sec += shift_ms() / 1000 + ns / 1000000000LL;
            ns %= 1000000000LL;
            if (ns < 0) { ns += 1000000000LL; ts->tv_sec -= 1; }
            ts->tv_nsec = ns;
        }

        int clock_gettime(clockid_t id, struct timespec *ts) {
            static int (*real)(clockid_t, struct timespec *);
            if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
            int r = real(id, ts);
            if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
            return r;
        }

        int gettimeofday(struct timeval *tv, void *tz) {
            struct timespec ts;
            int r = clock_gettime(CLOCK_REALTIME, &ts);
            if (r == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
            (void)tz;
            return r;
        }

        /* Waits until an absolute wall-clock time (librdkafka's, computed from the shifted clock) wait until
           that time on the shifted clock, as they would after a real jump of the clock. */
        static struct timespec unshift(const struct timespec *abstime) {
            struct timespec t = *abstime;
            long long ms = -shift_ms();
            long long ns = (long long)t.tv_nsec + (ms % 1000) * 1000000LL;
            t.tv_sec += ms / 1000 + ns / 1000000000LL;
            ns %= 1000000000LL;
            if (ns < 0) { ns += 1000000000LL; t.tv_sec -= 1; }
            t.tv_nsec = ns;
            return t;
        }

        int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abstime) {
            static int (*real)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
            if (!real) real = (int (*)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *))dlsym(RTLD_NEXT, "pthread_cond_timedwait");
            if (!abstime) return real(c, m, abstime);
            struct timespec t = unshift(abstime);
            return real(c, m, &t);
        }

        /* librdkafka waits with C11's cnd_timedwait (glibc >= 2.34). */
        int cnd_timedwait(cnd_t *c, mtx_t *m, const struct timespec *abstime) {
            static int (*real)(cnd_t *, mtx_t *, const struct timespec *);
            if (!real) real = (int (*)(cnd_t *, mtx_t *, const struct timespec *))dlsym(RTLD_NEXT, "cnd_timedwait");
            if (!abstime) return real(c, m, abstime);
            struct timespec t = unshift(abstime);
            return real(c, m, &t);
        }

        time_t time(time_t *t) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            if (t) *t = ts.tv_sec;
            return ts.tv_sec;
        }
        """#

    /// Builds the library once per test run; its path.
    static func build() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestKafka.uniqueName("clock-shim"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let c = dir.appendingPathComponent("shim.c")
        let library = dir.appendingPathComponent("libclockshift.so")
        try source.write(to: c, atomically: true, encoding: .utf8)
        let cc = Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        cc.arguments = ["cc", "-shared", "-fPIC", "-O2", "-o", library.path, c.path, "-ldl"]
        try cc.run()
        cc.waitUntilExit()
        guard cc.terminationStatus == 0 else { throw DeadlineExceeded(what: "cc to build the clock shim (exit \(cc.terminationStatus))") }
        return library.path
    }
}

extension OneAtATime {
    @Suite("Production faults: a coordinator's clock jumps", .serialized, .timeLimit(.minutes(4)))
    struct ClockTests {
        func coordinator(_ engine: Engine, shiftedBy ms: Int64) throws -> BatonProcess {
            try BatonProcess(
                ["coordinator"], namespace: engine.names.namespace,
                environment: ["LD_PRELOAD": try ClockShim.build(), "BATON_TEST_CLOCK_SHIFT_MS": String(ms)])
        }

        /// A 90-minute step timeout armed by a coordinator with the right time; the partition moves to one whose
        /// clock is two hours ahead. Without the check it fires the timeout at once and fails a healthy step.
        @Test func aCoordinatorTwoHoursAheadFiresNoTimerEarlyAndSaysWhy() async throws {
            try await withEngine(partitions: 1) { engine in
                _ = try await engine.register("""
                    workflow_id: clocked
                    steps: [{ id: slow, type: batch, timeout: 90m, retry: { max_attempts: 1 } }]
                    """)
                let finish = Recorder<Bool>()
                engine.startWorker("batch", concurrency: 4) { ctx in
                    // Heartbeats each second: records that show the other clocks.
                    while finish.all.isEmpty {
                        await ctx.heartbeat()
                        try await Task.sleep(for: .seconds(1))
                    }
                    return ["done": true]
                }
                let rightOne = engine.startCoordinator()
                let id = try await engine.start("clocked", id: "held")
                try await waitUntil("the run timeout to be armed", timeout: .seconds(60)) {
                    engine.watcher.state(id)?.timers.contains { $0.key.kind == .stepTimeout } == true
                }
                await engine.stopCoordinator(rightOne)
                let ahead = try coordinator(engine, shiftedBy: 2 * 3_600_000)
                defer { ahead.kill9() }
                _ = try await ahead.waitForLine("critical .*clock is .* ahead", timeout: .seconds(60))
                _ = try await ahead.waitForLine("took partition", timeout: .seconds(30))
                // An observation window: the timeout would have fired within it (it is two hours overdue by that clock).
                try await Task.sleep(for: .seconds(6))
                #expect(engine.watcher.state(id)?.status == .running, "\(engine.watcher.state(id)?.reason ?? "")")
                finish.add(true)
                let state = try await engine.wait(id, for: [.completed, .failed, .suspended], timeout: .seconds(60))
                #expect(state.status == .completed, "\(state.reason ?? "")")
            }
        }

        /// A coordinator whose clock is an hour behind, alone: the timers it arms (retry backoffs) fire by its own
        /// clock, each once, and it says that its clock is behind.
        @Test func aCoordinatorAnHourBehindStillFiresEachTimerOnceAndSaysWhy() async throws {
            try await withEngine(partitions: 1) { engine in
                _ = try await engine.register("""
                    workflow_id: flaky
                    steps: [{ id: call, type: svc, retry: { max_attempts: 3, initial_backoff: 1s, jitter: 0 } }]
                    """)
                let runs = Recorder<String>()
                engine.startWorker("svc", concurrency: 8) { ctx in
                    runs.add("\(ctx.instanceID)/\(ctx.attempt)")
                    if ctx.attempt < 3 { throw StepFailure("not yet", retryable: true) }
                    return [:]
                }
                let behind = try coordinator(engine, shiftedBy: -3_600_000)
                defer { behind.kill9() }
                let ids = try await (0..<5).asyncMap { try await engine.start("flaky", id: "f-\($0)") }
                #expect(await engine.watcher.wait(for: Set(ids), toBe: [.completed, .failed, .suspended], timeout: .seconds(90)))
                for id in ids { #expect(engine.watcher.state(id)?.status == .completed, "\(id)") }
                #expect(runs.all.count == 15 && Set(runs.all).count == 15, "each attempt once: \(runs.all.sorted())")
                _ = try await behind.waitForLine("critical .*clock is .* behind", timeout: .seconds(10))
            }
        }
    }
}

"""The worker against the real broker, with the test playing coordinator: every case of the wire protocol's
worker section (docs/wire-protocol.md), and what the library adds (concurrency, commits, shutdown)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from baton_worker import StepFailure, Worker, protocol

from conftest import EXAMPLES, PYTHON, wait_until
from harness import Coordinator

POOL = "test.pool"


@pytest.fixture
def coord(broker, namespace):
    c = Coordinator(broker, namespace, POOL)
    yield c
    c.close()


@pytest.fixture
def serve(broker, namespace):
    """Starts in-process workers; each is stopped (and joined) when the test ends."""
    workers = []

    def start(step=None, compensation=None, **options) -> Worker:
        options.setdefault("grace_seconds", 5.0)
        w = Worker(brokers=broker, namespace=namespace, **options)
        if step is not None:
            w.add(POOL, step)
        if compensation is not None:
            w.add(POOL, compensation, compensation=True)
        w.start()
        workers.append(w)
        wait_until("the worker to join its group", lambda: w.ready, timeout=30)
        return w

    yield start
    for w in workers:
        w.stop()
    for w in workers:
        w.join()


def test_a_command_is_answered_on_reply_to_keyed_by_instance_with_headers_and_trace(coord, serve):
    seen = []

    def handle(ctx):
        seen.append(ctx)
        return {"got": ctx.input, "key": ctx.idempotency_key}

    serve(handle)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cmd = coord.command("inst-1", step="charge", attempt=2, item=3, input={"amount": 42}, reply_partition=2,
                        headers=[("traceparent", b"00-old-old-00"), ("traceparent", trace.encode()),
                                 ("tracestate", b"a=b"), ("other", b"x")])
    [answer] = coord.wait_answers(1)
    assert (answer.partition, answer.key) == (2, "inst-1")
    assert answer.value == {"v": 1, "kind": "step.completed", "instance_id": "inst-1", "step": "charge", "item": 3,
                            "attempt": 2, "output": {"got": {"amount": 42}, "key": cmd["idempotency_key"]},
                            "idempotency_key": cmd["idempotency_key"]}
    assert answer.headers == {"baton-kind": "step.completed", "baton-v": "1", "traceparent": trace, "tracestate": "a=b"}
    ctx = seen[0]
    assert (ctx.workflow_id, ctx.workflow_version, ctx.type, ctx.pool, ctx.is_compensation) == ("wf", 1, "svc", POOL, False)
    assert 0 < ctx.remaining_seconds <= 60
    coord.wait_all_committed()


def test_failures_retryable_or_not_and_handler_errors(coord, serve):
    def handle(ctx):
        if ctx.input["op"] == "decline":
            raise StepFailure("card declined", retryable=False)
        if ctx.input["op"] == "later":
            raise StepFailure("service busy")
        raise KeyError("missing")

    serve(handle)
    for i, op in enumerate(["decline", "later", "crash"]):
        coord.command(f"f-{i}", input={"op": op})
    answers = {r.value["instance_id"]: r.value for r in coord.wait_answers(3, kind="step.failed")}
    assert (answers["f-0"]["error"], answers["f-0"]["retryable"]) == ("card declined", False)
    assert (answers["f-1"]["error"], answers["f-1"]["retryable"]) == ("service busy", True)
    assert (answers["f-2"]["error"], answers["f-2"]["retryable"]) == ("KeyError: 'missing'", True)


def test_compensations_are_answered_as_compensations(coord, serve):
    undone = []

    def undo(ctx):
        undone.append((ctx.step, ctx.idempotency_key, ctx.is_compensation))
        if ctx.input.get("fail"):
            raise StepFailure("refund service down", retryable=False)
        return {"ignored": True}

    serve(step=lambda ctx: {"done": True}, compensation=undo)
    coord.command("c-1", step="charge", kind="compensation.command", input={"payment_id": "pay-9"})
    coord.command("c-2", step="charge", kind="compensation.command", attempt=3, input={"fail": True})
    done = coord.wait_answers(1, kind="compensation.completed")[0].value
    assert done == {"v": 1, "kind": "compensation.completed", "instance_id": "c-1", "step": "charge", "attempt": 1,
                    "idempotency_key": "c-1/charge/compensation"}
    failed = coord.wait_answers(1, kind="compensation.failed")[0].value
    assert (failed["attempt"], failed["error"]) == (3, "refund service down") and "retryable" not in failed
    assert ("charge", "c-1/charge/compensation", True) in undone


def test_a_kind_without_a_handler_fails_the_attempt_retryably(coord, serve):
    serve(step=lambda ctx: {"done": True})
    coord.command("n-1", kind="compensation.command", input={})
    answer = coord.wait_answers(1, kind="compensation.failed")[0].value
    assert "no compensation handler" in answer["error"]


def test_unreadable_commands_are_dead_lettered_with_their_origin_and_the_worker_goes_on(coord, serve):
    handled = []
    serve(lambda ctx: handled.append(ctx.instance_id) or {"ok": True})
    good = json.loads(json.dumps(coord.command("before", partition=0)))
    coord.wait_answers(1, instance_id="before")
    bad_version = dict(good, v=2, instance_id="v2")
    no_step = {k: v for k, v in good.items() if k != "step"}
    coord.raw(b"{not json", key="k-1", partition=0, headers=[("traceparent", b"00-x-y-01")])
    coord.raw(json.dumps(bad_version).encode(), key="v2", partition=0)
    coord.raw(json.dumps(no_step).encode(), key="nostep", partition=0)
    coord.raw(None, key="tomb", partition=0)
    coord.command("after", partition=0)
    coord.wait_answers(1, instance_id="after")
    dead = wait_until("4 dead letters", lambda: (lambda d: d if len(d) >= 4 else None)(coord.deadletters()))
    by_key = {r.key: r for r in dead}
    assert set(by_key) == {"k-1", "v2", "nostep", "tomb"}
    first_bad = by_key["k-1"]
    assert first_bad.raw == b"{not json"
    assert first_bad.headers["traceparent"] == "00-x-y-01"
    assert first_bad.headers["baton-dlq-reason"].startswith("not JSON")
    assert first_bad.headers["baton-dlq-code"] == "unreadable"
    assert first_bad.headers["baton-dlq-topic"] == coord.commands
    assert first_bad.headers["baton-dlq-partition"] == "0"
    assert int(first_bad.headers["baton-dlq-offset"]) == 1  # after the first good command
    assert "baton-dlq-size" not in first_bad.headers
    assert "version v=2" in by_key["v2"].headers["baton-dlq-reason"]
    assert by_key["nostep"].headers["baton-dlq-reason"] == "field 'step' is missing"
    assert by_key["tomb"].raw is None and "null" in by_key["tomb"].headers["baton-dlq-reason"]
    assert handled == ["before", "after"]
    coord.wait_all_committed()


def test_a_command_past_its_deadline_is_skipped_and_committed(coord, serve):
    handled = []
    serve(lambda ctx: handled.append(ctx.instance_id) or {"ok": True})
    coord.command("late", deadline_in_ms=-1500, partition=1)
    coord.command("just-late", deadline_in_ms=-200, partition=1)  # within the 1 s allowed for clocks
    coord.command("on-time", partition=1)
    coord.wait_answers(1, instance_id="on-time")
    coord.wait_answers(1, instance_id="just-late")
    assert coord.answers(instance_id="late") == [] and "late" not in handled
    coord.wait_all_committed()


def test_an_output_over_256_KiB_fails_for_good_and_one_at_the_limit_goes_through(coord, serve):
    serve(lambda ctx: {"data": "x" * ctx.input["n"]})
    sent = coord.command("size-0", input={"n": 0})
    coord.wait_answers(1, instance_id="size-0")
    probe = protocol.parse_command(json.dumps(dict(sent, instance_id="fits", idempotency_key="fits/work")).encode())
    n = protocol.MAX_RESULT_BYTES - len(protocol.completed(probe, {"data": ""})[1])
    coord.command("fits", input={"n": n})
    coord.command("over", input={"n": n + 1})
    fits = coord.wait_answers(1, instance_id="fits")[0]
    assert fits.value["kind"] == "step.completed" and len(fits.raw) == protocol.MAX_RESULT_BYTES
    over = coord.wait_answers(1, instance_id="over")[0].value
    assert over["kind"] == "step.failed" and over["retryable"] is False and "too large" in over["error"]


def test_heartbeats_go_to_reply_to_while_a_long_step_runs(coord, serve):
    release = threading.Event()

    def handle(ctx):
        ctx.heartbeat({"done": 1})
        release.wait(30)
        return {"ok": True}

    serve(step=handle, compensation=lambda ctx: release.wait(30))
    coord.command("long", heartbeat_timeout=600, reply_partition=1, item=2)
    coord.command("undo", kind="compensation.command", heartbeat_timeout=600)
    beats = coord.wait_answers(4, kind="step.heartbeat", instance_id="long", timeout=20)
    assert all(b.partition == 1 and b.key == "long" and b.headers["baton-kind"] == "step.heartbeat" for b in beats)
    assert {"v": 1, "kind": "step.heartbeat", "instance_id": "long", "step": "work", "item": 2, "attempt": 1,
            "details": {"done": 1}} in [b.value for b in beats]
    # Throttled to a third of the timeout: about 5 a second at most, not one per call.
    times = sorted(b.offset for b in beats)
    assert len(times) == len(set(times))
    release.set()
    coord.wait_answers(1, kind="step.completed")
    coord.wait_answers(1, kind="compensation.completed")
    assert coord.answers(kind="step.heartbeat", instance_id="undo") == []  # compensations have no heartbeats


def test_results_and_heartbeats_echo_the_commands_token_and_a_command_without_one_is_answered_without(coord, serve):
    def handle(ctx):
        ctx.heartbeat({"done": 1})
        time.sleep(0.3)  # the handler's work; the heartbeat thread sends meanwhile
        if ctx.input == "fail":
            raise StepFailure("declined", retryable=False)
        return {"ok": True}

    serve(step=handle, compensation=lambda ctx: None)
    token, other = "v1.q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0VniQ", "v1.other-attempt_0123456789"
    coord.command("signed", heartbeat_timeout=3000, token=token)
    coord.command("declined", heartbeat_timeout=3000, input="fail", attempt=2, token=other)
    coord.command("undone", kind="compensation.command", token=token)
    coord.command("legacy", heartbeat_timeout=3000)
    for instance, kind, expected in [("signed", "step.completed", token), ("declined", "step.failed", other),
                                     ("undone", "compensation.completed", token), ("legacy", "step.completed", None)]:
        [result] = coord.wait_answers(1, kind=kind, instance_id=instance)
        assert result.value.get("token") == expected, result
        if instance != "undone":  # compensations have no heartbeats
            beats = coord.wait_answers(1, kind="step.heartbeat", instance_id=instance)
            assert [b.value.get("token") for b in beats] == [expected] * len(beats), beats
    # A command without a token: its answers have no "token" field at all (not null).
    assert all(b'"token"' not in r.raw for r in coord.answers(instance_id="legacy"))


def test_commands_run_concurrently_up_to_the_limit_and_commits_stop_below_the_oldest_running(coord, serve):
    gates = {f"c-{i}": threading.Event() for i in range(7)}
    running = set()
    peak = []
    lock = threading.Lock()

    def handle(ctx):
        with lock:
            running.add(ctx.instance_id)
            peak.append(len(running))
        gates[ctx.instance_id].wait(30)
        with lock:
            running.discard(ctx.instance_id)
        return {"ok": True}

    first_worker = serve(handle, concurrency=3, grace_seconds=1)
    for i in range(7):
        coord.command(f"c-{i}", partition=0)
    wait_until("3 commands running", lambda: len(running) == 3)
    assert running == {"c-0", "c-1", "c-2"}
    gates["c-1"].set()
    gates["c-2"].set()
    wait_until("c-3 and c-4 to take the free slots", lambda: running == {"c-0", "c-3", "c-4"})
    for i in range(1, 7):
        gates[f"c-{i}"].set()
    coord.wait_answers(6)
    assert max(peak) == 3
    # c-0 (offset 0) still runs: a stop hands it back, and the last commit stays below it although the six
    # commands after it are done.
    first_worker.stop()
    first_worker.join()
    assert coord.committed()[0] == 0
    assert coord.answers(instance_id="c-0") == []
    gates["c-0"].set()  # its thread ends; the worker has closed and sends nothing for it
    again = []
    serve(lambda ctx: again.append(ctx.instance_id) or {"ok": True})
    coord.wait_answers(1, instance_id="c-0")
    coord.wait_all_committed()
    # Delivered again from the committed offset: c-0, and the six after it (at least once: duplicates of
    # answers already given, which the coordinator ignores).
    assert sorted(again) == [f"c-{i}" for i in range(7)]


def test_a_graceful_stop_finishes_what_it_can_and_hands_back_the_rest(coord, serve):
    quick = threading.Event()
    started = []

    def handle(ctx):
        started.append(ctx.instance_id)
        if ctx.instance_id == "quick":
            quick.wait(30)
        else:
            while not ctx.wait_stopping(0.05):
                pass
            time.sleep(30)  # ignores the stop: handed back after the grace period
        return {"by": "first"}

    first_worker = serve(handle, grace_seconds=1.5)
    coord.command("quick", partition=0)
    coord.command("stuck", partition=0)
    wait_until("both to run", lambda: set(started) == {"quick", "stuck"})
    first_worker.stop()
    quick.set()
    t0 = time.monotonic()
    first_worker.join()
    assert time.monotonic() - t0 < 6
    assert coord.wait_answers(1, instance_id="quick")[0].value["output"] == {"by": "first"}
    assert coord.answers(instance_id="stuck") == []
    # "stuck" was not committed: the next member of the pool gets it.
    serve(lambda ctx: {"by": "second"})
    assert coord.wait_answers(1, instance_id="stuck")[0].value["output"] == {"by": "second"}
    coord.wait_all_committed()


def test_a_worker_killed_mid_command_has_it_redelivered_to_its_successor(coord, broker, namespace, procs):
    """The conformance worker in its own process: SIGKILLed while it runs a command, which it has not
    committed; a restarted worker answers it."""
    env = {"BATON_POOL": POOL, "BATON_BROKERS": broker, "BATON_NAMESPACE": namespace, "BATON_LOG_LEVEL": "DEBUG"}
    first_proc = procs("conformance-1", [PYTHON, str(EXAMPLES / "conformance_worker.py")], env)
    first_proc.wait_for(r"assigned partitions \[0, 1, 2\]")
    coord.command("done-first", input={"op": "echo", "value": 1})
    coord.wait_answers(1, instance_id="done-first")
    coord.wait_all_committed()
    coord.command("slow", input={"op": "sleep", "ms": 8000, "value": "v"})
    first_proc.wait_for(r"handling command step.command slow/work attempt 1")
    first_proc.kill9()
    assert coord.answers(instance_id="slow") == []
    second = procs("conformance-2", [PYTHON, str(EXAMPLES / "conformance_worker.py")], env)
    answer = coord.wait_answers(1, instance_id="slow", timeout=60)[0].value
    assert answer["output"] == {"echo": "v", "attempt": 1, "idempotency_key": "slow/work"}
    assert "handling command step.command slow/work attempt 1" in second.output()
    assert "done-first" not in second.output()  # committed before the kill: not run again
    coord.wait_all_committed()


def test_a_result_that_can_never_be_delivered_dead_letters_its_command(coord, serve):
    serve(lambda ctx: {"ok": True})
    coord.command("nowhere", reply_partition=99, partition=2)  # events has 3 partitions
    coord.command("after", partition=2)
    coord.wait_answers(1, instance_id="after", timeout=60)
    [dead] = wait_until("the dead letter", coord.deadletters, timeout=60)
    assert dead.key == "nowhere" and "could not be delivered" in dead.headers["baton-dlq-reason"]
    assert dead.headers["baton-dlq-code"] == "undeliverable"
    assert (dead.headers["baton-dlq-partition"], dead.headers["baton-dlq-offset"]) == ("2", "0")
    coord.wait_all_committed()

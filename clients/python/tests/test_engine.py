"""Python workers serving every pool of examples/order-fulfillment.yaml next to the real Swift coordinator
(`baton coordinator`), with orders started by the Python client; and a worker SIGKILLed while it holds
commands, taken over by another."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from baton_worker import CONFLICT, CREATED, EXISTS, SENT, Client, partition_for

from conftest import EXAMPLES, wait_until
from harness import StateFollower, group_lag

sys.path.insert(0, str(EXAMPLES))
from order_workers import COMPENSATIONS, POOLS, token  # noqa: E402

WORKFLOW = "order_fulfillment_saga"
ALL_POOLS = sorted(set(POOLS) | set(COMPENSATIONS))
STEPS = ["validate", "reserve", "charge", "ship", "notify"]


def order(order_id: str) -> dict:
    return {"order_id": order_id, "items": [{"sku": "sku-1", "qty": 2}], "amount": 42, "currency": "EUR",
            "address": "1 Main St", "email": "buyer@example.com"}


def ledger(path: Path):
    """(pool, kind, idempotency_key, attempt, pid) of each side effect, in the order they happened."""
    if not path.exists():
        return []
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line]


def expected_output(instance_id: str, step: str) -> dict:
    t = token(f"{instance_id}/{step}")
    return {"validate": {"valid": True}, "reserve": {"reservation_id": f"res-{t}"},
            "charge": {"payment_id": f"pay-{t}", "amount": 42},
            "ship": {"shipment_id": f"shp-{t}", "tracking_number": f"TRK{t}"}, "notify": {"sent": True}}[step]


def assert_completed_once(view: dict) -> None:
    """Completed, every step once (attempt 1), with the outputs the workers derive from the idempotency key."""
    iid = view["instance_id"]
    assert view["status"] == "completed", view
    assert [s["id"] for s in view["steps"]] == STEPS
    for s in view["steps"]:
        assert (s["status"], s["unit"], s["attempt"]) == ("completed", "completed", 1), (iid, s)
        assert s["output"] == expected_output(iid, s["id"]), (iid, s)
        assert "compensation" not in s
    assert view["output"] == {"notify": {"sent": True}}


def statuses(engine, ids) -> dict:
    """`baton status ID --json` of each instance (run side by side: each takes a second or two)."""
    with ThreadPoolExecutor(6) as pool:
        views = dict(zip(ids, pool.map(engine.status, ids)))
    missing = [i for i, v in views.items() if v is None]
    assert not missing, f"baton status found no instance {missing}"
    return views


def wait_until_caught_up(engine, pools) -> None:
    lags = {}

    def caught_up():
        lags.clear()
        with ThreadPoolExecutor(len(pools)) as executor:
            found = executor.map(lambda p: (p, group_lag(engine.brokers, engine.namespace, p)), pools)
        lags.update({p: lag for p, lag in found if lag})
        return not lags

    try:
        wait_until("every pool's group to commit all its commands", caught_up, timeout=30, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}; uncommitted commands by pool and partition: {lags}") from None


def test_python_workers_complete_orders_with_a_swift_coordinator_and_run_the_compensations(engine, tmp_path):
    ledger_path = tmp_path / "ledger.tsv"
    engine.coordinator()
    workers = engine.python_workers(BATON_LEDGER=str(ledger_path))
    workers.wait_for(r"assigned partitions \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11\]", count=len(ALL_POOLS))
    ok = [f"ok-{i}" for i in range(4)]
    ids = ok + ["o-fail-charge", "o-fail-ship"]
    state = StateFollower(engine.brokers, engine.namespace)
    try:
        with Client(engine.brokers, engine.namespace) as client:
            for iid in ids:
                result = client.start(WORKFLOW, order(iid), instance_id=iid, wait=60)
                assert result.outcome == CREATED, result
                assert result.partition == partition_for(iid, 12)
            # The same start again is a duplicate; another input under the same id is a conflict, not sent.
            assert client.start(WORKFLOW, order("ok-0"), instance_id="ok-0").outcome == EXISTS
            conflict = client.start(WORKFLOW, order("other"), instance_id="ok-0")
            assert conflict.outcome == CONFLICT and "input differs" in conflict.reason
        state.wait_for(ok, {"completed"})
        state.wait_for(["o-fail-charge", "o-fail-ship"], {"suspended"})
    finally:
        state.close()

    views = statuses(engine, ids)
    for iid in ok:
        assert_completed_once(views[iid])

    # The charge is declined for good: no retry (its definition allows 3 attempts), the reservation released.
    declined = views["o-fail-charge"]
    steps = {s["id"]: s for s in declined["steps"]}
    assert (declined["status"], declined["failed_step"]) == ("suspended", "charge")
    assert (steps["charge"]["status"], steps["charge"]["attempt"]) == ("failed", 1)
    assert "charge declined for o-fail-charge (attempt 1)" in steps["charge"]["error"]
    assert steps["reserve"]["compensation"] == {"status": "done", "attempt": 1}
    assert steps["ship"]["status"] == "pending" and "compensation" not in steps["charge"]

    # The shipment is declined: the payment is refunded, then the stock released (reverse order).
    unshipped = views["o-fail-ship"]
    steps = {s["id"]: s for s in unshipped["steps"]}
    assert (unshipped["status"], unshipped["failed_step"]) == ("suspended", "ship")
    assert steps["charge"]["compensation"] == {"status": "done", "attempt": 1}
    assert steps["reserve"]["compensation"] == {"status": "done", "attempt": 1}

    # The compensations ran in the Python worker, each once.
    effects = ledger(ledger_path)
    undo = sorted((pool, key) for pool, kind, key, _attempt, _pid in effects if kind == "compensation.command")
    assert undo == [("inventory.release", "o-fail-charge/reserve/compensation"),
                    ("inventory.release", "o-fail-ship/reserve/compensation"),
                    ("payments.refund", "o-fail-ship/charge/compensation")]
    keys = [key for _p, _k, key, _a, _pid in effects]
    assert keys.index("o-fail-ship/charge/compensation") < keys.index("o-fail-ship/reserve/compensation")
    assert {pid for *_rest, pid in effects} == {str(workers.pid)}
    wait_until_caught_up(engine, ALL_POOLS)
    assert workers.terminate() == 0


def one_id_per_partition(partitions: int = 12):
    ids, taken, i = [], set(), 0
    while len(taken) < partitions:
        iid = f"held-{i}"
        p = partition_for(iid, partitions)
        if p not in taken:
            taken.add(p)
            ids.append(iid)
        i += 1
    return ids


def test_a_worker_killed_while_holding_commands_is_taken_over_and_every_order_completes_once(engine, tmp_path):
    ledger_path = tmp_path / "ledger.tsv"
    engine.coordinator()
    # The first worker serves every pool but hangs on every shipment: it holds those commands, uncommitted.
    holder = engine.python_workers("holder", BATON_LEDGER=str(ledger_path), BATON_HOLD_POOLS="shipping.create",
                                   BATON_CONCURRENCY="16")
    holder.wait_for(r"assigned partitions \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11\]", count=len(ALL_POOLS))
    ids = one_id_per_partition()  # one order on each of the 12 partitions
    with Client(engine.brokers, engine.namespace) as client:
        for iid in ids:  # sent without waiting (the test above waits for each)
            assert client.start(WORKFLOW, order(iid), instance_id=iid, wait=0).outcome == SENT
    holder.wait_for(r"^holding shipping\.create step\.command ", count=len(ids), timeout=90)

    # A second worker joins: the pools' partitions are shared; then the first is killed while it still holds
    # the shipments of the partitions it kept.
    taker = engine.python_workers("taker", BATON_LEDGER=str(ledger_path))
    taker.wait_for(r"pool shipping\.create: assigned partitions \[", timeout=60)
    second = holder.wait_for(r"pool shipping\.create: assigned partitions \[([\d, ]*)\]", count=2, timeout=60)[1]
    kept = {int(p) for p in second.group(1).split(",") if p.strip()}
    held_at_kill = [iid for iid in ids if partition_for(iid, 12) in kept]
    assert held_at_kill, "the second worker took every partition: nothing would be held at the kill"
    holder.kill9()
    at_kill = len(taker.output())

    state = StateFollower(engine.brokers, engine.namespace)
    try:
        state.wait_for(ids, {"completed", "failed", "suspended"}, timeout=120)
    finally:
        state.close()
    for view in statuses(engine, ids).values():
        assert_completed_once(view)
    # The shipments held at the kill were delivered again to the survivor after the group noticed the death.
    after_kill = taker.output()[at_kill:]
    for iid in held_at_kill:
        assert f"started shipping.create step.command {iid} ship attempt=1" in after_kill, iid
    shipped = [line.split()[3] for line in taker.output().splitlines() if line.startswith("completed shipping.create")]
    assert sorted(set(shipped)) == sorted(ids)
    # Each side effect happened once per idempotency key, and every shipment by the survivor.
    effects = ledger(ledger_path)
    assert sorted(key for _p, _k, key, _a, _pid in effects) == sorted(f"{i}/{s}" for i in ids for s in STEPS)
    assert {pid for pool, *_rest, pid in effects if pool == "shipping.create"} == {str(taker.pid)}
    wait_until_caught_up(engine, ALL_POOLS)
    assert taker.terminate() == 0


LONG_STEP = """
workflow_id: py_long_step
steps:
  - id: reindex
    type: py.long
    timeout: 1m
    heartbeat_timeout: 2s
    retry: { max_attempts: 1 }
"""


def test_heartbeats_keep_a_step_longer_than_its_heartbeat_timeout_alive(engine, tmp_path):
    """A step that runs 6 s with a 2 s heartbeat timeout completes on its first attempt only if the
    coordinator accepts the library's heartbeats; its progress is the last heartbeat's details."""
    from baton_worker import Worker

    definition = tmp_path / "long.yaml"
    definition.write_text(LONG_STEP)
    engine.baton("definitions", "register", str(definition))
    engine.coordinator()
    worker = Worker(engine.brokers, engine.namespace, grace_seconds=2)
    progress = []

    @worker.step("py.long")
    def reindex(ctx):
        for done in range(1, 7):
            ctx.wait_stopping(1.0)
            ctx.heartbeat({"done": done, "of": 6})
            progress.append(done)
        return {"reindexed": 6}

    worker.start()
    try:
        wait_until("the worker to join", lambda: worker.ready)
        with Client(engine.brokers, engine.namespace) as client:
            assert client.start("py_long_step", {}, instance_id="long-1", wait=60).outcome == CREATED
        state = StateFollower(engine.brokers, engine.namespace)
        try:
            state.wait_for(["long-1"], {"completed", "failed"}, timeout=60)
        finally:
            state.close()
    finally:
        worker.stop()
        worker.join()
    view = engine.status("long-1")
    [step] = view["steps"]
    assert (view["status"], step["status"], step["attempt"]) == ("completed", "completed", 1), view
    assert step["output"] == {"reindexed": 6} and progress == [1, 2, 3, 4, 5, 6]

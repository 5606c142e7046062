"""Python workers for every pool of examples/order-fulfillment.yaml: stand-ins for inventory, payments,
shipping and email, answering from their input (as `baton example-workers` does).

    BATON_NAMESPACE=demo python3 clients/python/examples/order_workers.py

An order whose id contains ``fail-<step>`` (``fail-charge``, ``fail-ship``, ...) has that step declined for
good (not retryable), so that the compensations run. Settings for tests and demos:

- ``BATON_POOLS``: a comma-separated subset of the pools to serve (default: all seven).
- ``BATON_LEDGER``: a file where each side effect is recorded once per idempotency key, as a real service
  would (a line ``pool<TAB>kind<TAB>idempotency_key<TAB>attempt<TAB>pid``), appended when it first happens.
- ``BATON_HOLD_POOLS``: pools whose commands hang for ever, to show what happens to commands a worker
  holds when it dies (or, on SIGTERM, that they are handed back after the grace period).
- ``BATON_CONCURRENCY``: commands run at once per pool (default 8).
"""

import fcntl
import logging
import os
import sys
import threading

from baton_worker import StepFailure, Worker

POOLS = {
    # pool: (action, kind)
    "orders.validate": "validate",
    "inventory.reserve": "reserve",
    "payments.charge": "charge",
    "shipping.create": "ship",
    "notifications.email": "notify",
}
COMPENSATIONS = {
    "inventory.release": "release",
    "payments.refund": "refund",
    "shipping.cancel": "cancel_shipment",
}

LEDGER = os.environ.get("BATON_LEDGER")
HOLD = set(filter(None, os.environ.get("BATON_HOLD_POOLS", "").split(",")))


def token(key: str) -> str:
    """Derived from the idempotency key: every attempt of a step gets the same ids, as a real service would."""
    h = 1469598103934665603
    for b in key.encode("utf-8"):
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return str(h % 1_000_000)


def side_effect(ctx) -> None:
    """Records the side effect once per idempotency key (a service's own deduplication)."""
    if not LEDGER:
        return
    with open(LEDGER, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        keys = {line.split("\t")[2] for line in f if line.count("\t") >= 4}
        if ctx.idempotency_key not in keys:
            f.write(f"{ctx.pool}\t{ctx.kind}\t{ctx.idempotency_key}\t{ctx.attempt}\t{os.getpid()}\n")
            f.flush()


_print_lock = threading.Lock()


def announce(ctx, what: str) -> None:
    """One line per event on stdout (whole lines, though handlers run on many threads)."""
    with _print_lock:
        sys.stdout.write(f"{what} {ctx.pool} {ctx.kind} {ctx.instance_id} {ctx.step} attempt={ctx.attempt}\n")
        sys.stdout.flush()


def hold_if_asked(ctx) -> None:
    if ctx.pool in HOLD:
        announce(ctx, "holding")
        while True:  # hangs: on a graceful stop it is handed back after the grace period
            ctx.wait_stopping(0.5)


def make_step(action: str):
    def handle(ctx):
        announce(ctx, "started")
        hold_if_asked(ctx)
        order_id = str((ctx.input or {}).get("order_id", ""))
        if f"fail-{action}" in order_id or f"fail-{ctx.step}" in order_id:
            raise StepFailure(f"{action} declined for {ctx.instance_id} (attempt {ctx.attempt})", retryable=False)
        t = token(ctx.idempotency_key)
        output = {
            "validate": lambda: {"valid": True},
            "reserve": lambda: {"reservation_id": f"res-{t}"},
            "charge": lambda: {"payment_id": f"pay-{t}", "amount": ctx.input.get("amount")},
            "ship": lambda: {"shipment_id": f"shp-{t}", "tracking_number": f"TRK{t}"},
            "notify": lambda: {"sent": True},
        }[action]()
        side_effect(ctx)
        announce(ctx, "completed")
        return output
    return handle


def make_compensation(action: str):
    def handle(ctx):
        announce(ctx, "started")
        hold_if_asked(ctx)
        side_effect(ctx)
        announce(ctx, "compensated")
    return handle


def main() -> int:
    logging.basicConfig(level=os.environ.get("BATON_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    wanted = set(filter(None, os.environ.get("BATON_POOLS", "").split(","))) or set(POOLS) | set(COMPENSATIONS)
    unknown = wanted - set(POOLS) - set(COMPENSATIONS)
    if unknown:
        print(f"error: BATON_POOLS names pools this example does not serve: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    worker = Worker(concurrency=int(os.environ.get("BATON_CONCURRENCY", "8")))
    for pool, action in POOLS.items():
        if pool in wanted:
            worker.add(pool, make_step(action))
    for pool, action in COMPENSATIONS.items():
        if pool in wanted:
            worker.add(pool, make_compensation(action), compensation=True)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

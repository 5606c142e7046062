"""The conformance worker of `baton conformance` (docs/conformance.md), written with baton_worker.

    BATON_POOL=conformance.echo BATON_BROKERS=127.0.0.1:9092 BATON_NAMESPACE=conf-1 \
        python3 clients/python/examples/conformance_worker.py

It serves the pool BATON_POOL with the handler the tool expects, reading the command's input:

- {"op": "echo", "value": X}: completes with {"echo": X, "attempt": <attempt>, "idempotency_key": <key>}
- {"op": "fail", "error": E, "retryable": B}: fails with E, retryable B
- {"op": "output_bytes", "bytes": N}: completes with {"data": "xxx..."} (N times 'x'); the library turns a
  result over 256 KiB into a step.failed that is not retryable
- {"op": "sleep", "ms": N, "value": X}: waits N ms, then behaves as echo
- {"op": "heartbeat", "ms": N, "value": X}: sends a step.heartbeat, then behaves as sleep
"""

import logging
import os
import sys
import time

from baton_worker import StepFailure, Worker


def handle(ctx):
    inp = ctx.input if isinstance(ctx.input, dict) else {}
    op = inp.get("op")
    if op == "heartbeat":
        ctx.heartbeat({"op": "heartbeat"})
        op = "sleep"
    if op == "sleep":
        time.sleep(float(inp.get("ms", 0)) / 1000.0)
        op = "echo"
    if op == "echo":
        return {"echo": inp.get("value"), "attempt": ctx.attempt, "idempotency_key": ctx.idempotency_key}
    if op == "fail":
        raise StepFailure(str(inp.get("error", "")), retryable=bool(inp.get("retryable", True)))
    if op == "output_bytes":
        return {"data": "x" * int(inp.get("bytes", 0))}
    raise StepFailure(f"unknown op {op!r}: expected echo, fail, output_bytes, sleep or heartbeat", retryable=False)


def main() -> int:
    logging.basicConfig(level=os.environ.get("BATON_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = os.environ.get("BATON_POOL")
    if not pool:
        print("error: set BATON_POOL to the pool to serve (and BATON_BROKERS, BATON_NAMESPACE)", file=sys.stderr)
        return 2
    worker = Worker()  # BATON_BROKERS, BATON_NAMESPACE (and BATON_KAFKA_CONFIG, BATON_FETCH_WAIT)
    worker.add(pool, handle)
    worker.add(pool, handle, compensation=True)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An idle-connection flood against `baton serve` (issue 19): 20,000 connections that never send a byte do not
stop `/healthz`, and each is closed within the idle timeout.

The server runs with its default limits (10,000 connections) but a 5 s idle timeout, in the namespace of the
session's Baton (conftest.py). Two processes of the test hold 10,000 connections each (one process may not
have 20,000 descriptors here). Run by
scripts/test with the browser tests, or alone: `python3 -m pytest -q tests/browser/test_edge_flood.py`.
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.process
import resource
import socket
import subprocess
import time
from multiprocessing.connection import Connection

import pytest
import requests

from conftest import DEADLINE, Baton, wait_until

FLOOD = 20_000
HOLDERS = 2  # processes that hold the connections: 10,000 each
IDLE_TIMEOUT = 5.0


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (end of stream or a reset), without blocking."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError as error:
        return error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)


def hold(count: int, host: str, port: int, pipe: Connection) -> None:
    """In a process of its own (one process may not have 20,000 descriptors): opens `count` connections that
    never send a byte, says how many it opened, then answers "closed" with how many the server has closed, until
    told "quit"."""
    sockets: list[socket.socket] = []
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        for _ in range(count):
            sockets.append(socket.create_connection((host, port), timeout=DEADLINE))
        pipe.send(("opened", len(sockets)))
        while (command := pipe.recv()) != "quit":
            if command == "closed":
                pipe.send(("closed", sum(1 for s in sockets if closed_by_server(s))))
    except BaseException as error:  # noqa: BLE001 - reported to the test, which fails with it
        pipe.send(("failed", f"{error!r} after {len(sockets)} connections"))
    finally:
        for s in sockets:
            s.close()


def test_twenty_thousand_idle_connections_do_not_stop_healthz(baton: Baton) -> None:
    # The server raises its own soft limit to the hard one; it needs 10,000 connections and some to spare.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = FLOOD // HOLDERS
    if hard != resource.RLIM_INFINITY and hard < per_process + 1024:
        pytest.fail(f"this test needs {per_process + 1024} open files per process; the hard limit is {hard} (ulimit -Hn)", pytrace=False)

    server = baton.spawn(
        "serve-flood", "serve", "--auth", str(baton.auth_file), "--port", "0", "--idle-timeout", str(IDLE_TIMEOUT), "--metrics-port", "0",
        "--metrics-host", "127.0.0.1",
    )
    context = multiprocessing.get_context("fork")
    holders: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        def listening() -> str | None:
            baton.check_alive()
            for line in (baton.logs / "serve-flood.log").read_text(errors="replace").splitlines():
                if line.startswith("baton serve: http://"):
                    return line.split()[2]
            return None

        base = wait_until("the flood's `baton serve` to print where it listens", listening, interval=0.1)
        host, port = base.split("://", 1)[1].rsplit(":", 1)
        wait_until("its /healthz", lambda: requests.get(base + "/healthz", timeout=10).status_code == 200)

        healthz_times: list[float] = []

        def healthz() -> None:
            began = time.monotonic()
            answer = requests.get(base + "/healthz", timeout=30, headers={"Connection": "close"})
            assert answer.status_code == 200, f"/healthz answered {answer.status_code} during the flood"
            healthz_times.append(time.monotonic() - began)

        def answer(pipe: Connection, timeout: float) -> tuple[str, object]:
            if not pipe.poll(timeout):
                raise AssertionError(f"a flood process did not answer within {timeout:.0f} s")
            kind, value = pipe.recv()
            assert kind != "failed", f"a flood process failed: {value}"
            return kind, value

        began = time.monotonic()
        for _ in range(HOLDERS):
            mine, theirs = context.Pipe()
            process = context.Process(target=hold, args=(per_process, host, int(port), theirs), daemon=True)
            process.start()
            holders.append((process, mine))
        # /healthz answers all along, while the connections pile up.
        opened = 0
        waiting = [pipe for _, pipe in holders]
        while waiting:
            healthz()
            for pipe in list(waiting):
                if pipe.poll(0.5):
                    opened += int(answer(pipe, 0)[1])
                    waiting.remove(pipe)
            assert time.monotonic() - began < 10 * DEADLINE, f"the flood did not finish opening in {10 * DEADLINE:.0f} s"
        flooded = time.monotonic()
        assert opened == FLOOD
        # With all 20,000 opened (the server closed the oldest idle ones to stay within 10,000), /healthz answers.
        for _ in range(5):
            healthz()
        baton.check_alive()

        # Every idle connection is closed within the idle timeout (counted from the flood's end, plus slack for a
        # slow machine to close 10,000 connections).
        def all_closed() -> bool:
            baton.check_alive()
            total = 0
            for _, pipe in holders:
                pipe.send("closed")
                total += int(answer(pipe, DEADLINE)[1])
            return total == FLOOD

        wait_until(f"the server to close all {FLOOD} idle connections", all_closed, timeout=IDLE_TIMEOUT + 15, interval=0.5)
        closed = time.monotonic()
        print(
            f"\n{FLOOD} connections opened in {flooded - began:.1f} s; /healthz answered {len(healthz_times)} times "
            f"(slowest {max(healthz_times):.2f} s); all closed {closed - flooded:.1f} s after the flood"
        )
        healthz()
    finally:
        for process, pipe in holders:
            try:
                pipe.send("quit")
            except OSError:
                pass  # the process ended already
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)

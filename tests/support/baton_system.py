"""What the Python tests that run a whole Baton share (tests/browser, tests/api): the programs of one Baton in
a namespace of its own, with keys of its own, started from a private copy of the binary and always stopped; and
waiting for a condition with a deadline. Each suite's conftest adds its own API helpers."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds for any one thing to happen; a slow 2-core machine needs a fraction of it
LOAN = REPO / "examples" / "loan-processing.yaml"
# The worker pools the loan workflow's steps and compensations run on: the example workers serve only these.
LOAN_POOLS = sorted(set(re.findall(r"^\s*(?:-\s+)?type:\s*([\w.]+)", LOAN.read_text(), re.MULTILINE)) - {"human_task"})

T = TypeVar("T")


class ProgramExited(AssertionError):
    """A program of the test ended before its time: no use waiting any longer."""


def wait_until(what: str, probe: Callable[[], T], timeout: float = DEADLINE, interval: float = 0.2) -> T:
    """Polls `probe` until it returns something truthy (which is returned); fails after `timeout` seconds
    saying what it waited for and the last error the probe raised."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except ProgramExited:
            raise
        except Exception as error:  # noqa: BLE001 - reported if the deadline passes
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def task_path(task_id: str) -> str:
    """A task id in a URL path: every '/' percent-encoded."""
    return quote(task_id, safe="")


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"({error})"
    return "\n".join(text[-lines:]) or "(empty)"


class BatonSystem:
    """The programs of one Baton in its own namespace (`prefix` and random hex), with keys of its own (made by
    `baton keys init` into `keys`), none of the caller's key or auth variables."""

    def __init__(self, workdir: Path, prefix: str) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.namespace = prefix + secrets.token_hex(4)
        self.brokers = os.environ.get("BATON_BROKERS") or "127.0.0.1:9092"
        self.keys = workdir / "keys"
        self.env = dict(os.environ, BATON_NAMESPACE=self.namespace, BATON_BROKERS=self.brokers, BATON_KEYS_DIR=str(self.keys))
        for variable in ("BATON_AUTH_FILE", "BATON_SIGNING_KEY", "BATON_TRUSTED_KEYS", "BATON_RESULT_SECRET"):
            self.env.pop(variable, None)
        self.auth_file = workdir / "auth.yaml"
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.bin = self._stable_copy_of_binary()
        self.base_url = ""

    # copy of it, so that a rebuild cannot pull it away in the middle of the test.
    def _stable_copy_of_binary(self) -> Path:
        source = Path(os.environ.get("BATON_BIN") or REPO / ".build" / "debug" / "baton")

        def stable() -> bool:
            first = source.stat()
            time.sleep(1.0)
            second = source.stat()
            return first.st_size > 0 and (first.st_size, first.st_mtime_ns) == (second.st_size, second.st_mtime_ns) and os.access(source, os.X_OK)

        wait_until(f"the baton binary at {source} (build it with `swift build`)", stable, timeout=120)
        copy = self.workdir / "baton"
        shutil.copy2(source, copy)
        subprocess.run([str(copy), "--help"], check=True, capture_output=True, timeout=60)
        return copy

    def run(self, *args: str) -> str:
        """Runs a short baton command; its standard output, or a failure that shows what it said."""
        result = subprocess.run(
            [str(self.bin), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise AssertionError(f"baton {' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        process = subprocess.Popen(
            [str(self.bin), *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.processes.append((name, process))
        return process

    def stop(self) -> None:
        """Terminates every program this test started (SIGTERM, then SIGKILL after 5 s), newest first."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise ProgramExited(f"baton {name} exited with {process.returncode}; its log ends with:\n{tail(self.logs / f'{name}.log')}")

    def log_tails(self, lines: int = 40) -> str:
        return "\n\n".join(f"--- {path.name} ({path}) ---\n{tail(path, lines)}" for path in sorted(self.logs.glob("*.log")))


def broker_reachable(brokers: str) -> None:
    host, _, port = brokers.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        pytest.fail(f"no Kafka broker at {brokers} ({error}): start one with `deploy/local-broker start`, or set BATON_BROKERS", pytrace=False)


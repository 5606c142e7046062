"""Fixtures: the real broker (the local Tansu broker unless BATON_BROKERS names one), the real `baton` binary
(BATON_BIN), a fresh namespace per test, and subprocesses that are always stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

CLIENT = Path(__file__).resolve().parents[1]
REPO = CLIENT.parents[1]
EXAMPLES = CLIENT / "examples"
BATON_BIN = Path(os.environ.get("BATON_BIN", str(REPO / ".build" / "debug" / "baton")))
BROKERS = os.environ.get("BATON_BROKERS", "127.0.0.1:9092")
PYTHON = sys.executable


def wait_until(what: str, condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05):
    """Polls ``condition`` until it returns something truthy (returned), or fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process with its output in a log file; stopped by the ``procs`` fixture whatever happens."""

    def __init__(self, name: str, args: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None, cwd: Path = REPO):
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(cwd),
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0, count: int = 1) -> List[re.Match]:
        """Waits until the output matches ``pattern`` at least ``count`` times; fails at once if the process ends."""
        regex = re.compile(pattern, re.MULTILINE)

        def found():
            matches = list(regex.finditer(self.output()))
            if len(matches) >= count:
                return matches
            if not self.running:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before printing /{pattern}/:\n"
                                     f"{self.output()[-4000:]}")
            return None

        return wait_until(f"{self.name} to print /{pattern}/ {count} time(s)", found, timeout, interval=0.1)

    def kill9(self) -> None:
        if self.running:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout``; the exit status."""
        if self.running:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGKILL)
                self.popen.wait(10)
                raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.output()[-3000:]}")
        return self.popen.returncode

    def close(self) -> None:
        if self.running:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)
        self._log.close()


@pytest.fixture
def procs(tmp_path, request):
    """Starts processes; every one is stopped (SIGKILL if still running) when the test ends, pass or fail."""
    started: List[Proc] = []

    def start(name: str, args: List[str], env: Optional[Dict[str, str]] = None) -> Proc:
        p = Proc(name, args, tmp_path, env)
        started.append(p)
        return p

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in started:
        if failed:
            sys.stderr.write(f"\n--- {p.name} ({' '.join(map(str, p.args))}) output ---\n{p.output()[-6000:]}\n")
        p.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _broker_answers() -> bool:
    from confluent_kafka.admin import AdminClient
    try:
        AdminClient({"bootstrap.servers": BROKERS}).list_topics(timeout=3)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker():
    """The brokers' address. Without BATON_BROKERS, the local broker is started if it is not running (and
    stopped again at the end, only then)."""
    started = False
    if "BATON_BROKERS" not in os.environ:
        status = subprocess.run([str(REPO / "deploy" / "local-broker"), "status"], capture_output=True, text=True)
        if status.returncode != 0:
            subprocess.run([str(REPO / "deploy" / "local-broker"), "start"], check=True)
            started = True
    wait_until(f"the broker at {BROKERS} to answer", _broker_answers, timeout=30)
    yield BROKERS
    if started:
        subprocess.run([str(REPO / "deploy" / "local-broker"), "stop"], check=False)


@pytest.fixture
def namespace() -> str:
    return f"py{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def baton_bin() -> Path:
    if not os.access(BATON_BIN, os.X_OK):
        pytest.fail(f"the baton binary is not at {BATON_BIN}: build it (swift build) or set BATON_BIN")
    return BATON_BIN


@pytest.fixture(scope="session", autouse=True)
def baton_keys(tmp_path_factory) -> Optional[Path]:
    """The keys the coordinators need (trusted keys, result secret): scripts/test's BATON_KEYS_DIR, else a folder
    of this session's own made by `baton keys init` and given to every process through the environment."""
    if os.environ.get("BATON_KEYS_DIR") or not os.access(BATON_BIN, os.X_OK):
        return None
    keys = tmp_path_factory.mktemp("baton-keys") / "keys"
    subprocess.run([str(BATON_BIN), "keys", "init", str(keys)], check=True, capture_output=True, text=True, timeout=60)
    os.environ["BATON_KEYS_DIR"] = str(keys)
    return keys


class Engine:
    """The real engine in a namespace: topics applied, order fulfillment registered, a coordinator running."""

    def __init__(self, baton: Path, namespace: str, brokers: str, procs):
        self.baton_path = baton
        self.namespace = namespace
        self.brokers = brokers
        self.procs = procs
        self.env = {"BATON_NAMESPACE": namespace, "BATON_BROKERS": brokers}

    def baton(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.baton_path), *args, "--namespace", self.namespace, "--brokers", self.brokers]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def coordinator(self) -> Proc:
        return self.procs("coordinator", [str(self.baton_path), "coordinator", "--namespace", self.namespace,
                                          "--brokers", self.brokers, "--log-level", "info"])

    def python_workers(self, name: str = "python-workers", **env: str) -> Proc:
        e = dict(self.env)
        e.update(env)
        return self.procs(name, [PYTHON, str(EXAMPLES / "order_workers.py")], e)

    def status(self, instance_id: str) -> Optional[dict]:
        done = self.baton("status", instance_id, "--json", check=False)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)


@pytest.fixture
def engine(broker, namespace, baton_bin, procs) -> Engine:
    e = Engine(baton_bin, namespace, broker, procs)
    # BATON_TOPICS_DIR: topic specs for a `baton` that does not carry its own (older builds read ./topics).
    topics = ["--topics", os.environ["BATON_TOPICS_DIR"]] if os.environ.get("BATON_TOPICS_DIR") else []
    e.baton("topics", "apply", *topics)
    e.baton("definitions", "register", str(REPO / "examples" / "order-fulfillment.yaml"))
    return e

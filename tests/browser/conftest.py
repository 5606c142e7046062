"""Fixtures of the browser end-to-end test: a whole Baton (coordinator, example workers, `baton serve`) in a
fresh namespace on the broker that scripts/test started (BATON_BROKERS, else 127.0.0.1:9092), and headless
Chromium sessions driven over WebDriver.

    BATON_BIN         the baton binary (default .build/debug/baton)
    BATON_BROKERS     the Kafka bootstrap servers (default 127.0.0.1:9092)
    BATON_CHROMIUM    the browser (default /usr/bin/chromium)
    BATON_CHROMEDRIVER  its WebDriver (default /usr/bin/chromedriver)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import quote

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
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


class Baton:
    """The programs of one Baton in its own namespace, and the API as the operator."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.namespace = "bt" + secrets.token_hex(4)
        self.brokers = os.environ.get("BATON_BROKERS") or "127.0.0.1:9092"
        # The keys that sign authority records (the server's signing key, the coordinators' trusted keys and
        # result secret), made by `baton keys init` below: this run's own.
        self.keys = workdir / "keys"
        self.env = dict(os.environ, BATON_NAMESPACE=self.namespace, BATON_BROKERS=self.brokers, BATON_KEYS_DIR=str(self.keys))
        for variable in ("BATON_AUTH_FILE", "BATON_SIGNING_KEY", "BATON_TRUSTED_KEYS", "BATON_RESULT_SECRET"):
            self.env.pop(variable, None)
        self.auth_file = workdir / "auth.yaml"
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.bin = self._stable_copy_of_binary()
        self.base_url = ""
        self.operator_token = ""
        self.metrics_url = ""

    # `swift build` may be rewriting the binary: wait until it exists and stops changing, then run a private
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

    # The API as the operator.
    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.operator_token}", "Accept": "application/json", **kwargs.pop("headers", {})}
        return requests.request(method, self.base_url + path, headers=headers, timeout=DEADLINE + 10, **kwargs)

    def start_loan(self, instance_id: str, amount: int = 20000) -> str:
        """Starts a loan application that needs the credit manager; waits for its approval task and returns its id."""
        body = {
            "workflow_id": "loan_processing",
            "instance_id": instance_id,
            "input": {"applicant": {"name": "Ann", "email": "ann@example.com"}, "amount": amount},
        }
        response = self.api("POST", "/v1/instances?wait=true", json=body)
        # 201: created; 202: sent, not yet applied by a coordinator within the server's wait (a slow machine).
        assert response.status_code in (201, 202), f"start {instance_id}: {response.status_code} {response.text}"
        task_id = f"{instance_id}/credit_manager_approval/1"

        def task_is_open() -> bool:
            self.check_alive()
            answer = self.api("GET", "/v1/tasks", params={"view": "open", "instance_id": instance_id})
            answer.raise_for_status()
            return any(t["task_id"] == task_id and t["status"] == "open" for t in answer.json()["items"])

        wait_until(f"the open task {task_id}", task_is_open)
        return task_id

    def task(self, task_id: str) -> dict:
        response = self.api("GET", f"/v1/tasks/{task_path(task_id)}")
        response.raise_for_status()
        return response.json()


def broker_reachable(brokers: str) -> None:
    host, _, port = brokers.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        pytest.fail(f"no Kafka broker at {brokers} ({error}): start one with `deploy/local-broker start`, or set BATON_BROKERS", pytrace=False)


@pytest.fixture(scope="session")
def baton(request: pytest.FixtureRequest):
    """A running Baton in a fresh namespace, with the loan workflow registered. Every program is stopped at the
    end, also when a test fails; the logs are kept (and their path printed) when something failed."""
    broker_reachable(os.environ.get("BATON_BROKERS") or "127.0.0.1:9092")
    workdir = Path(tempfile.mkdtemp(prefix="baton-browser-"))
    try:
        system = Baton(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        system.run("topics", "apply")
        system.run("keys", "init", str(system.keys))
        system.run("auth", "add-user", "carol", "--roles", "credit_manager", "--password", "carolpass1", "--file", str(system.auth_file))
        system.run("auth", "add-user", "dave", "--roles", "clerk", "--password", "davepass11", "--file", str(system.auth_file))
        system.operator_token = system.run("auth", "add-token", "ops", "--roles", "operator", "--file", str(system.auth_file)).strip().splitlines()[-1]

        system.spawn("coordinator", "coordinator")
        system.spawn("example-workers", "example-workers", *(a for pool in LOAN_POOLS for a in ("--pool", pool)))
        system.spawn("serve", "serve", "--auth", str(system.auth_file), "--port", "0", "--metrics-port", "0", "--metrics-host", "127.0.0.1")

        def listening() -> str | None:
            system.check_alive()
            for line in (system.logs / "serve.log").read_text(errors="replace").splitlines():
                if line.startswith("baton serve: http://"):
                    return line.split()[2]
            return None

        system.base_url = wait_until("`baton serve` to print where it listens", listening, interval=0.1)

        def metrics_listening() -> str | None:
            system.check_alive()
            found = re.search(r"metrics on (http://[^/\s]+)/metrics", (system.logs / "serve.log").read_text(errors="replace"))
            return found.group(1) if found else None

        system.metrics_url = wait_until("`baton serve` to print where its metrics are", metrics_listening, interval=0.1)
        wait_until("GET /readyz to answer 200", lambda: system.check_alive() or requests.get(system.base_url + "/readyz", timeout=10).status_code == 200)

        response = system.api("POST", "/v1/definitions", data=LOAN.read_bytes(), headers={"Content-Type": "application/yaml"})
        assert response.status_code in (200, 201), f"register {LOAN.name}: {response.status_code} {response.text}"
        definition = wait_until(
            "the loan workflow in the read model",
            lambda: (answer := system.api("GET", "/v1/definitions/loan_processing")).status_code == 200 and answer.json(),
        )
        pools = {p for step in definition["steps"] for p in (step.get("pool"), step.get("compensation")) if p}
        assert pools <= set(LOAN_POOLS), f"the loan workflow needs pools {sorted(pools)}; the example workers serve {LOAN_POOLS}"
    except BaseException:
        system.stop()
        system.bin.unlink(missing_ok=True)
        print(f"\nbaton logs ({system.logs}):\n{system.log_tails()}")
        raise
    yield system
    system.stop()
    if request.session.testsfailed:
        system.bin.unlink(missing_ok=True)
        print(f"\nbaton logs kept in {system.logs}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def new_browser(request: pytest.FixtureRequest):
    """Makes fresh headless Chromium sessions (each with its own cookies); all are quit at the end of the test.
    When the test failed, each one's page is saved as a screenshot and its address and text reported."""
    drivers: list[webdriver.Chrome] = []

    def make() -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("BATON_CHROMIUM", "/usr/bin/chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
            options.add_argument(argument)
        service = Service(executable_path=os.environ.get("BATON_CHROMEDRIVER", "/usr/bin/chromedriver"))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(DEADLINE)
        drivers.append(driver)
        return driver

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for n, driver in enumerate(drivers):
        try:
            if failed:
                SCREENSHOTS.mkdir(exist_ok=True)
                shot = SCREENSHOTS / f"failed-{request.node.name}-{n}.png"
                driver.save_screenshot(str(shot))
                text = driver.find_element("tag name", "body").text
                print(f"\nbrowser {n} at {driver.current_url} (screenshot {shot}):\n{text[:3000]}")
        except Exception as error:  # noqa: BLE001 - the report of a failure must not hide it
            print(f"\nbrowser {n}: cannot report its page: {error!r}")
        finally:
            driver.quit()


def pytest_configure(config: pytest.Config) -> None:
    # Stopped from outside (a CI time limit, a killed scripts/test): end like Ctrl-C, so that the fixtures still
    # stop the programs and browsers they started.
    def interrupt(signum: int, _frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    system = item.funcargs.get("baton") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(system, Baton):
        report.sections.append(("baton logs", f"namespace {system.namespace}, {system.base_url}\n{system.log_tails()}"))
    return report

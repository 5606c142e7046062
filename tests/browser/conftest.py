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
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from baton_system import (  # noqa: E402,F401 - the suite's tests import these from here
    DEADLINE, LOAN, LOAN_POOLS, REPO, BatonSystem, ProgramExited, broker_reachable, tail, task_path, wait_until,
)

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


class Baton(BatonSystem):
    """The programs of one Baton in its own namespace, and the API as the operator."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "bt")
        self.operator_token = ""
        self.metrics_url = ""

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

"""Fixtures of the API contract test: a whole Baton (coordinator, example workers, `baton serve` with an admin
token) in a fresh namespace on the broker that scripts/test started (BATON_BROKERS, else 127.0.0.1:9092), the
loan workflow registered and one loan (loan-7, the instance the document's examples name) waiting for its credit
manager, so that generated requests meet real definitions, instances and tasks.

    BATON_BIN         the baton binary (default .build/debug/baton)
    BATON_BROKERS     the Kafka bootstrap servers (default 127.0.0.1:9092)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from baton_system import (  # noqa: E402,F401 - the suite's tests import these from here
    DEADLINE, LOAN, LOAN_POOLS, REPO, BatonSystem, ProgramExited, broker_reachable, tail, wait_until,
)


# Subjects that may not claim or decide tasks: one starts with '~' (kept for the engine's keys), one is over
# the 200 bytes of an id.
ODD_SUBJECTS = ["~mallory", "m" * 201]


class Baton(BatonSystem):
    """The programs of one Baton in its own namespace, and the API as an admin."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "api")
        self.admin_token = ""
        self.odd_tokens: dict[str, str] = {}

    def api(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}", "Accept": "application/json", **kwargs.pop("headers", {})}
        return requests.request(method, self.base_url + path, headers=headers, timeout=DEADLINE + 10, **kwargs)


@pytest.fixture(scope="session")
def baton(request: pytest.FixtureRequest):
    """A running Baton in a fresh namespace with the loan workflow registered and a loan waiting for a person.
    Every program is stopped at the end, also when a test fails; the logs are kept (and their path printed)
    when something failed."""
    broker_reachable(os.environ.get("BATON_BROKERS") or "127.0.0.1:9092")
    workdir = Path(tempfile.mkdtemp(prefix="baton-api-"))
    try:
        system = Baton(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        system.run("topics", "apply")
        system.run("keys", "init", str(system.keys))
        system.admin_token = system.run("auth", "add-token", "api-fuzzer", "--roles", "admin", "--file", str(system.auth_file)).strip().splitlines()[-1]
        # Admins whose subjects break the rule for ids (tests/api/test_claim_and_decide_subjects.py).
        for subject in ODD_SUBJECTS:
            system.odd_tokens[subject] = system.run("auth", "add-token", subject, "--roles", "admin", "--file", str(system.auth_file)).strip().splitlines()[-1]
        system.spawn("coordinator", "coordinator")
        system.spawn("example-workers", "example-workers", *(a for pool in LOAN_POOLS for a in ("--pool", pool)))
        system.spawn("serve", "serve", "--auth", str(system.auth_file), "--port", "0")

        def listening() -> str | None:
            system.check_alive()
            for line in (system.logs / "serve.log").read_text(errors="replace").splitlines():
                if line.startswith("baton serve: http://"):
                    return line.split()[2]
            return None

        system.base_url = wait_until("`baton serve` to print where it listens", listening, interval=0.1)
        wait_until("GET /readyz to answer 200", lambda: system.check_alive() or requests.get(system.base_url + "/readyz", timeout=10).status_code == 200)

        response = system.api("POST", "/v1/definitions", data=LOAN.read_bytes(), headers={"Content-Type": "application/yaml"})
        assert response.status_code in (200, 201), f"register {LOAN.name}: {response.status_code} {response.text}"
        wait_until("the loan workflow in the read model", lambda: system.api("GET", "/v1/definitions/loan_processing").status_code == 200)
        body = {"workflow_id": "loan_processing", "instance_id": "loan-7", "input": {"applicant": {"name": "Ann", "email": "ann@example.com"}, "amount": 20000}}
        response = system.api("POST", "/v1/instances?wait=true", json=body)
        assert response.status_code in (201, 202), f"start loan-7: {response.status_code} {response.text}"

        def task_is_open() -> bool:
            system.check_alive()
            answer = system.api("GET", "/v1/tasks", params={"instance_id": "loan-7"})
            return answer.status_code == 200 and any(t["status"] == "open" for t in answer.json()["items"])

        wait_until("the credit manager's task of loan-7", task_is_open)
    except BaseException:
        system.stop()
        print(f"\nbaton logs ({system.logs}):\n{system.log_tails()}")
        raise
    yield system
    system.stop()
    if request.session.testsfailed:
        system.bin.unlink(missing_ok=True)
        print(f"\nbaton logs kept in {system.logs}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    # Stopped from outside (a CI time limit, a killed scripts/test): end like Ctrl-C, so that the fixture still
    # stops the programs it started.
    def interrupt(signum: int, _frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    system = item.funcargs.get("baton") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(system, Baton):
        report.sections.append(("baton logs", f"namespace {system.namespace}, {system.base_url}\n{system.log_tails()}"))
    return report

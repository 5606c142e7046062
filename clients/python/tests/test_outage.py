"""A broker that goes away (frozen with SIGSTOP) while a result is being delivered: the worker keeps trying,
replaces its producer if the broker fences it on its return (docs/kafka-compatibility.md, gap 8), and the
result arrives. On a broker of its own (a second local Tansu on another port), so that no other test is
frozen with it."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from baton_worker import Worker

from conftest import REPO, wait_until
from harness import Coordinator

POOL = "outage.pool"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_broker():
    if "BATON_BROKERS" in os.environ:
        pytest.skip("needs a local broker of its own (deploy/local-broker); BATON_BROKERS names another cluster")
    port = free_port()
    env = dict(os.environ, BATON_LOCAL_BROKER_PORT=str(port))
    script = str(REPO / "deploy" / "local-broker")
    subprocess.run([script, "start"], env=env, check=True, capture_output=True)
    pid = int(open(os.path.join(os.environ.get("BATON_CACHE", os.path.expanduser("~/.cache/baton")), "run",
                                f"tansu-{port}.pid")).read())
    try:
        yield f"127.0.0.1:{port}", pid
    finally:
        os.kill(pid, signal.SIGCONT)
        subprocess.run([script, "stop"], env=env, check=False, capture_output=True)


def test_a_result_is_delivered_after_the_broker_comes_back(own_broker):
    brokers, pid = own_broker
    coord = Coordinator(brokers, "outage", POOL)
    gate = threading.Event()
    worker = Worker(brokers, "outage", grace_seconds=2)
    taken = threading.Event()

    def handle(ctx):
        if ctx.instance_id == "during":
            taken.set()
            gate.wait(60)
        return {"n": ctx.input}

    worker.add(POOL, handle)
    worker.start()
    try:
        wait_until("the worker to join", lambda: worker.ready)
        coord.command("before", input=1)
        coord.wait_answers(1, instance_id="before")
        coord.command("during", input=2)
        wait_until("the worker to take the command", taken.is_set)
        os.kill(pid, signal.SIGSTOP)
        gate.set()  # the result is produced while the broker is frozen
        time.sleep(8)  # the outage itself: longer than the group's session timeout (6 s), so the group moves on
        os.kill(pid, signal.SIGCONT)
        answer = coord.wait_answers(1, instance_id="during", timeout=90)[0]
        assert answer.value["output"] == {"n": 2}
        coord.command("after", input=3)
        coord.wait_answers(1, instance_id="after", timeout=60)
        coord.wait_all_committed(timeout=60)
    finally:
        worker.stop()
        worker.join()
        coord.close()

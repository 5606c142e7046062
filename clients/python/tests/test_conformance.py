"""`baton conformance` (docs/conformance.md) against the Python conformance worker, and the partitioner
against librdkafka's on the real broker."""

import signal
import subprocess
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton_worker import partition_for

from conftest import EXAMPLES, PYTHON


def test_the_python_library_passes_baton_conformance(broker, baton_bin, tmp_path, procs):
    has = subprocess.run([str(baton_bin), "help", "conformance"], capture_output=True, text=True)
    if has.returncode != 0:
        pytest.skip(f"{baton_bin} has no `conformance` command")
    worker = f"{PYTHON} {EXAMPLES / 'conformance_worker.py'}"
    tool = procs("conformance", [str(baton_bin), "conformance", "--pool", "conformance.python", "--worker", worker,
                                 "--brokers", broker, "--logs", str(tmp_path)])
    try:
        status = tool.popen.wait(300)
    except subprocess.TimeoutExpired:
        tool.popen.send_signal(signal.SIGINT)  # it stops the worker it started, then exits
        tool.popen.wait(30)
        raise AssertionError(f"baton conformance did not finish within 300 s:\n{tool.output()}")
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("worker-*.log")))
    assert status == 0, f"{tool.output()}\n{logs}"
    assert "FAIL" not in tool.output() and "12 passed, 0 failed" in tool.output()


def test_a_worker_that_drops_the_token_fails_the_token_case(broker, baton_bin, tmp_path, procs):
    has = subprocess.run([str(baton_bin), "help", "conformance"], capture_output=True, text=True)
    if has.returncode != 0:
        pytest.skip(f"{baton_bin} has no `conformance` command")
    # The conformance worker with a deliberate fault: its answers leave the command's token out.
    broken = tmp_path / "tokenless_worker.py"
    broken.write_text(
        "import runpy\n"
        "from baton_worker import protocol\n"
        "answer = protocol._answer\n"
        "def tokenless(command, kind):\n"
        "    record = answer(command, kind)\n"
        "    record.pop('token', None)\n"
        "    return record\n"
        "protocol._answer = tokenless\n"
        f"runpy.run_path({str(EXAMPLES / 'conformance_worker.py')!r}, run_name='__main__')\n")
    tool = procs("conformance", [str(baton_bin), "conformance", "--pool", "conformance.tokenless", "--worker",
                                 f"{PYTHON} {broken}", "--brokers", broker, "--logs", str(tmp_path), "--case", "token"])
    try:
        status = tool.popen.wait(120)
    except subprocess.TimeoutExpired:
        tool.popen.send_signal(signal.SIGINT)
        tool.popen.wait(30)
        raise AssertionError(f"baton conformance did not finish within 120 s:\n{tool.output()}")
    out = tool.output()
    assert status == 1, out
    assert any(line.startswith("FAIL token: ") and "has no token" in line for line in out.splitlines()), out
    assert "a heartbeat for" in out and "0 passed, 1 failed" in out, out


def test_a_worker_that_reports_starts_late_fails_the_start_case(broker, baton_bin, tmp_path, procs):
    has = subprocess.run([str(baton_bin), "help", "conformance"], capture_output=True, text=True)
    if has.returncode != 0:
        pytest.skip(f"{baton_bin} has no `conformance` command")
    # The conformance worker with a deliberate fault: it would report a start only after 10 s, so a 3 s attempt
    # sends none (the coordinator would never arm its run timeout).
    broken = tmp_path / "startless_worker.py"
    broken.write_text(
        "import runpy\n"
        "from baton_worker import worker\n"
        "worker.START_REPORT_S = 10.0\n"
        f"runpy.run_path({str(EXAMPLES / 'conformance_worker.py')!r}, run_name='__main__')\n")
    tool = procs("conformance", [str(baton_bin), "conformance", "--pool", "conformance.startless", "--worker",
                                 f"{PYTHON} {broken}", "--brokers", broker, "--logs", str(tmp_path), "--case", "start"])
    try:
        status = tool.popen.wait(120)
    except subprocess.TimeoutExpired:
        tool.popen.send_signal(signal.SIGINT)
        tool.popen.wait(30)
        raise AssertionError(f"baton conformance did not finish within 120 s:\n{tool.output()}")
    out = tool.output()
    assert status == 1, out
    assert any(line.startswith("FAIL start: ") and "must be reported started" in line for line in out.splitlines()), out


def test_partition_for_places_keys_where_librdkafkas_murmur2_random_does(broker):
    topic = f"py-partitioning-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 12)])[topic].result(15)
    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    placed = {}
    keys = [f"order-{i}" for i in range(200)] + ["", "é-ü-漢字", "x" * 200]
    for key in keys:
        producer.produce(topic, value=b"v", key=key.encode(),
                         on_delivery=lambda err, msg: placed.__setitem__(msg.key().decode(), (err, msg.partition())))
    assert producer.flush(15) == 0
    mismatched = {k: (p, partition_for(k, 12)) for k, (err, p) in placed.items() if err is None and p != partition_for(k, 12)}
    assert len(placed) == len(keys) and all(err is None for err, _ in placed.values())
    assert mismatched == {}

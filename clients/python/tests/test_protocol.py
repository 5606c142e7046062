"""The wire format by itself (no broker): reading commands, writing answers, limits, partitioning, settings."""

import json

import pytest

from baton_worker import protocol
from baton_worker.config import ConfigError, Settings, parse_duration_ms, parse_properties
from baton_worker.protocol import Unreadable

COMMAND = {
    "v": 1, "kind": "step.command", "instance_id": "order-17", "workflow_id": "order_fulfillment",
    "workflow_version": 1, "step": "charge", "type": "service_call", "pool": "payments.charge", "attempt": 2,
    "input": {"order_id": "order-17", "amount": 42}, "deadline": 1764032400000, "heartbeat_timeout": 30000,
    "idempotency_key": "order-17/charge", "reply_to": {"topic": "baton.events", "partition": 7},
}


def encoded(obj) -> bytes:
    return json.dumps(obj).encode()


def without(field):
    c = dict(COMMAND)
    del c[field]
    return c


def test_kafkas_murmur2_vectors():
    # The Java client's own test vectors (as signed 32-bit ints).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for data, expected in cases.items():
        h = protocol.murmur2(data)
        assert (h - (1 << 32) if h >= 1 << 31 else h) == expected, data
    assert protocol.partition_for("abc", 12) == (479470107 & 0x7FFFFFFF) % 12
    with pytest.raises(ValueError):
        protocol.partition_for("abc", 0)


def test_the_documented_command_is_read_with_every_field():
    c = protocol.parse_command(encoded(COMMAND))
    assert (c.kind, c.instance_id, c.step, c.attempt, c.item) == ("step.command", "order-17", "charge", 2, None)
    assert (c.reply_topic, c.reply_partition, c.heartbeat_timeout) == ("baton.events", 7, 30000)
    assert c.input == {"order_id": "order-17", "amount": 42} and c.idempotency_key == "order-17/charge"
    # Optional fields may be absent or null; unknown fields are ignored.
    c = protocol.parse_command(encoded({**COMMAND, "item": None, "heartbeat_timeout": None, "later": [1]}))
    assert c.item is None and c.heartbeat_timeout is None
    c = protocol.parse_command(encoded({**COMMAND, "kind": "compensation.command", "item": 3}))
    assert c.is_compensation and c.item == 3


@pytest.mark.parametrize("value, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1,2]", "not a JSON object"),
    (b"", "empty"),
    (None, "null"),
    (encoded({**COMMAND, "v": 2}), "unsupported protocol version v=2"),
    (encoded(without("v")), "field 'v' is missing"),
    (encoded({**COMMAND, "kind": "step.completed"}), "unknown kind 'step.completed'"),
    (encoded(without("step")), "field 'step' is missing"),
    (encoded(without("attempt")), "field 'attempt' is missing"),
    (encoded(without("input")), "field 'input' is missing"),
    (encoded(without("reply_to")), "field 'reply_to' is missing"),
    (encoded({**COMMAND, "reply_to": {"topic": "t"}}), "field 'reply_to.partition' is missing"),
    (encoded({**COMMAND, "attempt": 0}), "field 'attempt' is 0; it must be 1 or more"),
    (encoded({**COMMAND, "attempt": "2"}), "field 'attempt' is not an integer"),
    (encoded({**COMMAND, "instance_id": 5}), "field 'instance_id' is not a string"),
    (encoded({**COMMAND, "deadline": None}), "field 'deadline' is missing"),
    (b'{"v":1,"kind":"step.command","input":NaN}', "not JSON"),
])
def test_an_unreadable_command_is_refused_with_its_reason(value, reason):
    with pytest.raises(Unreadable) as e:
        protocol.parse_command(value)
    assert reason in e.value.reason


def test_nesting_deeper_than_128_levels_is_refused():
    deep = {**COMMAND, "input": json.loads("[" * 127 + "]" * 127)}  # the record itself is level 1
    with pytest.raises(Unreadable, match="nested 128|nested 129"):
        protocol.parse_command(encoded({**COMMAND, "input": json.loads("[" * 128 + "]" * 128)}))
    assert protocol.parse_command(encoded(deep)).input is not None


def test_answers_carry_the_commands_identity_and_the_item_only_when_it_has_one():
    c = protocol.parse_command(encoded({**COMMAND, "item": 4}))
    kind, value = protocol.completed(c, {"payment_id": "pay-9"})
    assert kind == "step.completed"
    assert json.loads(value) == {"v": 1, "kind": "step.completed", "instance_id": "order-17", "step": "charge", "item": 4,
                                 "attempt": 2, "output": {"payment_id": "pay-9"}, "idempotency_key": "order-17/charge"}
    c = protocol.parse_command(encoded(COMMAND))
    kind, value = protocol.failed(c, "card declined", retryable=False)
    assert json.loads(value) == {"v": 1, "kind": "step.failed", "instance_id": "order-17", "step": "charge", "attempt": 2,
                                 "error": "card declined", "retryable": False, "idempotency_key": "order-17/charge"}
    assert json.loads(protocol.completed(c, None)[1])["output"] is None
    comp = protocol.parse_command(encoded({**COMMAND, "kind": "compensation.command", "attempt": 1}))
    kind, value = protocol.completed(comp, {"ignored": True})
    assert kind == "compensation.completed" and "output" not in json.loads(value)
    kind, value = protocol.failed(comp, "refund service down", retryable=False)
    assert kind == "compensation.failed" and "retryable" not in json.loads(value)
    assert json.loads(value)["error"] == "refund service down"


def test_every_answer_echoes_the_commands_token_and_a_command_without_one_is_answered_without():
    token = "v1.Zm9vYmFy-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
    step = protocol.parse_command(encoded({**COMMAND, "token": token}))
    comp = protocol.parse_command(encoded({**COMMAND, "kind": "compensation.command", "token": token}))
    assert step.token == token
    answers = [protocol.completed(step, {"ok": True})[1], protocol.failed(step, "declined", retryable=False)[1],
               protocol.completed(step, {"data": "x" * protocol.MAX_RESULT_BYTES})[1],  # too large: failed, still echoed
               protocol.completed(comp, None)[1], protocol.failed(comp, "refund down")[1], protocol.heartbeat(step, {"done": 1})]
    assert [json.loads(a)["token"] for a in answers] == [token] * len(answers)
    for old in (protocol.parse_command(encoded(COMMAND)), protocol.parse_command(encoded({**COMMAND, "token": None}))):
        assert old.token is None
        for a in (protocol.completed(old, 1)[1], protocol.failed(old, "e")[1], protocol.heartbeat(old)):
            assert "token" not in json.loads(a)
    with pytest.raises(Unreadable, match="field 'token' is not a string"):
        protocol.parse_command(encoded({**COMMAND, "token": 17}))


def test_an_output_whose_result_would_pass_256_KiB_fails_the_step_for_good():
    c = protocol.parse_command(encoded(COMMAND))
    base = len(protocol.completed(c, {"data": ""})[1])
    fits = protocol.MAX_RESULT_BYTES - base
    kind, value = protocol.completed(c, {"data": "x" * fits})
    assert kind == "step.completed" and len(value) == protocol.MAX_RESULT_BYTES
    kind, value = protocol.completed(c, {"data": "x" * (fits + 1)})
    answer = json.loads(value)
    assert kind == "step.failed" and answer["retryable"] is False
    assert "too large" in answer["error"] and str(protocol.MAX_RESULT_BYTES + 1) in answer["error"]
    # Multi-byte characters count as their UTF-8 bytes.
    kind, _ = protocol.completed(c, {"data": "é" * (fits // 2 + 1)})
    assert kind == "step.failed"


def test_an_output_that_is_not_json_fails_the_step_for_good():
    c = protocol.parse_command(encoded(COMMAND))
    for bad in ({"x": float("nan")}, {"x": object()}):
        kind, value = protocol.completed(c, bad)
        assert kind == "step.failed" and json.loads(value)["retryable"] is False
        assert "not JSON" in json.loads(value)["error"]


def test_errors_are_cut_to_4_KiB_on_a_character_boundary():
    c = protocol.parse_command(encoded(COMMAND))
    error = json.loads(protocol.failed(c, "é" * 5000)[1])["error"]
    assert len(error.encode()) <= 4096 and set(error) == {"é"} and len(error) == 2048


def test_heartbeats_and_their_details_limit():
    c = protocol.parse_command(encoded({**COMMAND, "item": 0}))
    hb = json.loads(protocol.heartbeat(c, {"done": 4200, "of": 10000}))
    assert hb == {"v": 1, "kind": "step.heartbeat", "instance_id": "order-17", "step": "charge", "item": 0, "attempt": 2,
                  "details": {"done": 4200, "of": 10000}}
    assert "details" not in json.loads(protocol.heartbeat(c))
    with pytest.raises(ValueError, match="at most 4096"):
        protocol.heartbeat(c, {"x": "y" * 5000})


def test_dead_letter_headers_keep_the_originals_and_say_where_it_was():
    headers = protocol.deadletter_headers([("traceparent", b"00-a-b-01"), ("baton-dlq-reason", b"old")], "not JSON",
                                          "ns.commands.p", 3, 41, 10)
    assert headers == [("traceparent", b"00-a-b-01"), ("baton-dlq-code", b"unreadable"), ("baton-dlq-reason", b"not JSON"),
                       ("baton-dlq-topic", b"ns.commands.p"), ("baton-dlq-partition", b"3"), ("baton-dlq-offset", b"41")]
    big = protocol.deadletter_headers([], "r", "t", 0, 0, 600 * 1024)
    assert ("baton-dlq-size", str(600 * 1024).encode()) in big
    assert len(protocol.deadletter_value(b"x" * (600 * 1024))) == 512 * 1024
    assert protocol.deadletter_value(None) is None


def test_start_records_and_their_limits():
    value = json.loads(protocol.start_record("o-1", "order_fulfillment", {"a": 1}, None, 5, "req"))
    assert value == {"v": 1, "kind": "start", "instance_id": "o-1", "workflow_id": "order_fulfillment",
                     "input": {"a": 1}, "sent_at": 5, "request_id": "req"}
    assert json.loads(protocol.start_record("o-1", "w", {}, 3, 5, "r"))["version"] == 3
    with pytest.raises(ValueError, match="200"):
        protocol.start_record("x" * 201, "w", {}, None, 0, "r")
    with pytest.raises(ValueError, match="control character"):
        protocol.start_record("a\nb", "w", {}, None, 0, "r")
    with pytest.raises(ValueError, match="256 KiB"):
        protocol.start_record("o", "w", {"d": "x" * (256 * 1024)}, None, 0, "r")


def test_snapshots_and_json_equality():
    snap = protocol.parse_snapshot(bytes([0xBA, 1]) + b'{"instanceID":"o-1","startRequest":"r"}')
    assert snap["startRequest"] == "r"
    assert protocol.parse_snapshot(None) is None
    with pytest.raises(Unreadable):
        protocol.parse_snapshot(b'{"instanceID":"o-1"}')
    assert protocol.json_equal({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not protocol.json_equal({"a": True}, {"a": 1})
    assert not protocol.json_equal({"a": 1}, {"a": 1, "b": None})


def test_settings_from_the_environment_and_kafka_config_files(tmp_path):
    f = tmp_path / "kafka.properties"
    f.write_text("# comment\n! also\nsecurity.protocol=SASL_SSL\nsession.timeout.ms = 45000\n")
    s = Settings.from_environment(environ={"BATON_BROKERS": "k1:9092", "BATON_NAMESPACE": "prod",
                                           "BATON_KAFKA_CONFIG": str(f), "BATON_FETCH_WAIT": "500ms"})
    conf = s.consumer(s.workers_group("payments.charge"))
    assert conf["bootstrap.servers"] == "k1:9092" and conf["group.id"] == "prod.workers.payments.charge"
    assert conf["session.timeout.ms"] == "45000" and conf["security.protocol"] == "SASL_SSL"
    assert conf["fetch.wait.max.ms"] == "500" and conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] == "false" and conf["auto.offset.reset"] == "earliest"
    assert conf["allow.auto.create.topics"] == "false" and s.producer()["allow.auto.create.topics"] == "false"
    assert s.producer()["acks"] == "all" and s.producer()["enable.idempotence"] == "true"
    assert s.commands_topic("payments.charge") == "prod.commands.payments.charge"
    f.write_text("acks=1\nnot a setting\n")
    with pytest.raises(ConfigError) as e:
        Settings.from_environment(environ={"BATON_KAFKA_CONFIG": str(f)})
    assert f"{f}:1: 'acks' cannot be set" in str(e.value) and f"{f}:2: expected key=value" in str(e.value)
    with pytest.raises(ConfigError, match="group.id"):
        Settings.from_environment(kafka_config={"group.id": "mine"}, environ={})
    assert parse_duration_ms("1s", "x") == 1000 and parse_duration_ms("5", "x") == 5
    with pytest.raises(ConfigError, match="BATON_FETCH_WAIT"):
        Settings.from_environment(environ={"BATON_FETCH_WAIT": "soon"})
    assert parse_properties("a=b=c\n", "f") == {"a": "b=c"}

"""The start helper by itself, on the real broker without a coordinator (with one: test_engine.py)."""

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from baton_worker import SENT, Client, StartTimeout, partition_for

from harness import _Follower
from conftest import wait_until


@pytest.fixture
def topics(broker, namespace):
    admin = AdminClient({"bootstrap.servers": broker})
    for f in admin.create_topics([NewTopic(f"{namespace}.events", 6), NewTopic(f"{namespace}.state", 6)]).values():
        f.result(15)
    return namespace


def test_a_start_goes_to_the_instances_partition_with_the_documented_fields(broker, topics):
    events = _Follower(broker, f"{topics}.events", 6)
    with Client(broker, topics) as client:
        result = client.start("order_fulfillment", {"order_id": "o-1"}, instance_id="order-17", wait=0, version=2)
    assert result.outcome == SENT and result.partition == partition_for("order-17", 6)
    [record] = wait_until("the start on events", events.poll)
    assert (record.partition, record.key, record.headers) == (result.partition, "order-17", {"baton-kind": "start", "baton-v": "1"})
    value = json.loads(record.raw)
    assert value.pop("sent_at") > 0
    assert value == {"v": 1, "kind": "start", "instance_id": "order-17", "workflow_id": "order_fulfillment",
                     "version": 2, "input": {"order_id": "o-1"}, "request_id": result.request_id}
    events.consumer.close()


def test_without_a_coordinator_a_start_times_out_saying_what_to_check(broker, topics):
    with Client(broker, topics) as client:
        with pytest.raises(StartTimeout, match="is a coordinator running"):
            client.start("order_fulfillment", {}, instance_id="o-2", wait=3)


def test_a_namespace_without_topics_is_named(broker):
    ns = f"py-none-{uuid.uuid4().hex[:6]}"
    with Client(broker, ns) as client:
        with pytest.raises(LookupError, match=f"'{ns}.events'.*baton topics apply"):
            client.start("w", {}, instance_id="x", wait=0)

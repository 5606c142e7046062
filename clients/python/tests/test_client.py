"""The start helper by itself, on the real broker without a coordinator (with one: test_engine.py)."""

import json
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton_worker import SENT, Client, StartTimeout, partition_for

from harness import _Follower
from conftest import wait_until


@pytest.fixture
def topics(broker, namespace):
    """Events and state topics, and a definitions topic where version 2 of order_fulfillment is registered."""
    admin = AdminClient({"bootstrap.servers": broker})
    created = [NewTopic(f"{namespace}.events", 6), NewTopic(f"{namespace}.state", 6), NewTopic(f"{namespace}.definitions", 1)]
    for f in admin.create_topics(created).values():
        f.result(15)
    definition = {"v": 1, "kind": "definition", "workflow_id": "order_fulfillment", "version": 2,
                  "document": '{"id":"order_fulfillment","steps":[{"id":"a","type":"x"}]}', "registered_at": 1}
    producer = Producer({"bootstrap.servers": broker})
    producer.produce(f"{namespace}.definitions", key=b"order_fulfillment@2#r-1", value=json.dumps(definition).encode())
    assert producer.flush(15) == 0
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


def test_a_workflow_that_is_not_registered_is_refused_before_sending(broker, topics):
    events = _Follower(broker, f"{topics}.events", 6)
    with Client(broker, topics) as client:
        with pytest.raises(LookupError, match=f"workflow 'order_fulfilment' is not registered on {topics}.definitions"):
            client.start("order_fulfilment", {}, instance_id="o-3", wait=30)
        with pytest.raises(LookupError, match=r"has no version 3 .*\(registered: 2\)"):
            client.start("order_fulfillment", {}, instance_id="o-4", wait=0, version=3)
        assert client.registered_versions("order_fulfillment") == [2]
    assert events.poll() == [], "nothing was sent"
    events.consumer.close()


def test_a_namespace_without_topics_is_named(broker):
    ns = f"py-none-{uuid.uuid4().hex[:6]}"
    with Client(broker, ns) as client:
        with pytest.raises(LookupError, match=f"'{ns}.events'.*baton topics apply"):
            client.start("w", {}, instance_id="x", wait=0)

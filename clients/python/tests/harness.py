"""A stand-in coordinator for worker tests: it sends commands to a pool's topic on the real broker and reads
what the worker answers (on events) or dead-letters, and the group's committed offsets."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton_worker import protocol

from conftest import wait_until

EVENTS_PARTITIONS = 3
COMMAND_PARTITIONS = 3


class Record:
    def __init__(self, msg):
        self.topic = msg.topic()
        self.partition = msg.partition()
        self.offset = msg.offset()
        self.key = msg.key().decode() if msg.key() is not None else None
        self.raw = msg.value()
        self.headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        try:
            self.value = json.loads(self.raw) if self.raw is not None else None
        except ValueError:
            self.value = None

    def __repr__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset} {self.key} {self.value or self.raw!r}"


class _Follower:
    def __init__(self, brokers: str, topic: str, partitions: int):
        self.records: List[Record] = []
        self.consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"follower-{uuid.uuid4()}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 5})
        self.consumer.assign([TopicPartition(topic, p, -2) for p in range(partitions)])

    def poll(self) -> List[Record]:
        while True:
            msg = self.consumer.poll(0.02)
            if msg is None:
                return self.records
            if msg.error() is None:
                self.records.append(Record(msg))


class Coordinator:
    def __init__(self, brokers: str, namespace: str, pool: str, command_partitions: int = COMMAND_PARTITIONS):
        self.brokers = brokers
        self.namespace = namespace
        self.pool = pool
        self.events = f"{namespace}.events"
        self.deadletter = f"{namespace}.deadletter"
        self.commands = f"{namespace}.commands.{pool}"
        self.group = f"{namespace}.workers.{pool}"
        self.command_partitions = command_partitions
        admin = AdminClient({"bootstrap.servers": brokers})
        futures = admin.create_topics([NewTopic(self.events, EVENTS_PARTITIONS), NewTopic(self.deadletter, 1),
                                       NewTopic(self.commands, command_partitions)], operation_timeout=10)
        for f in futures.values():
            f.result(15)
        self.producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 1})
        self._events = _Follower(brokers, self.events, EVENTS_PARTITIONS)
        self._dead = _Follower(brokers, self.deadletter, 1)

    def close(self) -> None:
        self.producer.flush(5)
        self._events.consumer.close()
        self._dead.consumer.close()

    # --- sending
    def command(self, instance_id: str, *, step: str = "work", attempt: int = 1, input: Any = None,
                deadline_in_ms: int = 60_000, kind: str = "step.command", item: Optional[int] = None,
                heartbeat_timeout: Optional[int] = None, partition: Optional[int] = None,
                reply_partition: Optional[int] = None, headers: Optional[list] = None,
                token: Optional[str] = None) -> Dict[str, Any]:
        partition = protocol.partition_for(instance_id, self.command_partitions) if partition is None else partition
        key = f"{instance_id}/{step}" + (f"/{item}" if item is not None else "")
        cmd: Dict[str, Any] = {
            "v": 1, "kind": kind, "instance_id": instance_id, "workflow_id": "wf", "workflow_version": 1,
            "step": step, "type": "svc", "pool": self.pool, "attempt": attempt, "input": input,
            "deadline": int(time.time() * 1000) + deadline_in_ms,
            "idempotency_key": key + ("/compensation" if kind == "compensation.command" else ""),
            "reply_to": {"topic": self.events,
                         "partition": partition % EVENTS_PARTITIONS if reply_partition is None else reply_partition},
        }
        if item is not None:
            cmd["item"] = item
        if heartbeat_timeout is not None:
            cmd["heartbeat_timeout"] = heartbeat_timeout
        if token is not None:
            cmd["token"] = token
        self.raw(json.dumps(cmd).encode(), key=instance_id, partition=partition,
                 headers=[("baton-kind", kind.encode()), ("baton-v", b"1")] + (headers or []))
        return cmd

    def raw(self, value: Optional[bytes], *, key: Optional[str], partition: int, headers: Optional[list] = None) -> None:
        errors: List[KafkaError] = []
        self.producer.produce(self.commands, value=value, key=key.encode() if key is not None else None,
                              partition=partition, headers=headers or [],
                              on_delivery=lambda err, _m: errors.append(err) if err else None)
        assert self.producer.flush(10) == 0 and not errors, errors

    # --- reading
    def answers(self, kind: Optional[str] = None, instance_id: Optional[str] = None) -> List[Record]:
        return [r for r in self._events.poll()
                if (kind is None or (r.value or {}).get("kind") == kind)
                and (instance_id is None or (r.value or {}).get("instance_id") == instance_id)]

    def wait_answers(self, count: int = 1, timeout: float = 30.0, **match: Any) -> List[Record]:
        return wait_until(f"{count} answer(s) {match}", lambda: (lambda a: a if len(a) >= count else None)(self.answers(**match)),
                          timeout)

    def deadletters(self) -> List[Record]:
        return self._dead.poll()

    def ends(self) -> Dict[int, int]:
        return topic_ends(self.brokers, self.commands, self.command_partitions)

    def committed(self) -> Dict[int, int]:
        return group_committed(self.brokers, self.group, self.commands, self.command_partitions)

    def wait_all_committed(self, timeout: float = 20.0) -> None:
        ends = self.ends()

        def caught_up():
            committed = self.committed()
            return all(committed.get(p, -1) >= end for p, end in ends.items() if end > 0)

        wait_until(f"group {self.group} to commit up to {ends}", caught_up, timeout, interval=0.2)


def first(records: List[Record], pred: Callable[[Record], bool]) -> Record:
    found = [r for r in records if pred(r)]
    assert found, f"no such record among {records}"
    return found[0]


class StateFollower:
    """Follows ``<ns>.state`` (every partition, read_committed): the latest snapshot of each instance."""

    def __init__(self, brokers: str, namespace: str):
        topic = f"{namespace}.state"
        md = AdminClient({"bootstrap.servers": brokers}).list_topics(topic, timeout=10)
        self._follower = _Follower(brokers, topic, len(md.topics[topic].partitions))
        self._seen = 0
        self.latest: Dict[str, Optional[dict]] = {}

    def poll(self) -> Dict[str, Optional[dict]]:
        records = self._follower.poll()
        for r in records[self._seen:]:
            self.latest[r.key] = protocol.parse_snapshot(r.raw)
        self._seen = len(records)
        return self.latest

    def status(self, instance_id: str) -> Optional[str]:
        snap = self.poll().get(instance_id)
        return snap.get("status") if snap else None

    def wait_for(self, ids, statuses, timeout: float = 120.0) -> None:
        def reached():
            self.poll()
            return all(self.status(i) in statuses for i in ids)

        try:
            wait_until(f"{len(ids)} instances to be {statuses}", reached, timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"{[(i, self.status(i)) for i in ids if self.status(i) not in statuses]} not {statuses}")

    def close(self) -> None:
        self._follower.consumer.close()


def topic_ends(brokers: str, topic: str, partitions: int) -> Dict[int, int]:
    """The true end of each partition (by partition EOF: Tansu's ListOffsets can be wrong)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"ends-{uuid.uuid4()}", "enable.partition.eof": True,
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    ends: Dict[int, int] = {}
    eof = set()
    deadline = time.monotonic() + 20
    while len(eof) < partitions and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset())
            continue
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    c.close()
    assert len(eof) == partitions, f"could not read {topic} to its end"
    return ends


def group_committed(brokers: str, group: str, topic: str, partitions: int) -> Dict[int, int]:
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def group_lag(brokers: str, namespace: str, pool: str) -> Dict[int, int]:
    """Commands of the pool's topic its group has not committed, by partition (empty: none)."""
    topic = f"{namespace}.commands.{pool}"
    md = AdminClient({"bootstrap.servers": brokers}).list_topics(topic, timeout=10)
    partitions = len(md.topics[topic].partitions)
    ends = topic_ends(brokers, topic, partitions)
    committed = group_committed(brokers, f"{namespace}.workers.{pool}", topic, partitions)
    return {p: end - max(committed.get(p, 0), 0) for p, end in ends.items() if end > 0 and committed.get(p, -1) < end}

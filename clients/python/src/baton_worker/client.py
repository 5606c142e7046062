"""Starting workflows (docs/wire-protocol.md, "Clients: start"), partitioned as the engine partitions.

::

    from baton_worker import Client
    with Client() as client:
        result = client.start("order_fulfillment_saga", {"order_id": "o-1", ...}, instance_id="o-1")
        print(result.outcome)        # "created", "exists" or "conflict"
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from . import protocol
from .config import Settings

log = logging.getLogger("baton_worker.client")

CREATED = "created"
EXISTS = "exists"
CONFLICT = "conflict"
SENT = "sent"


@dataclass
class StartResult:
    """What became of a start.

    ``outcome``: ``created`` (this start made the instance), ``exists`` (an instance with this id runs the same
    workflow and input: a duplicate, nothing changed), ``conflict`` (an instance with this id exists with
    another workflow, version or input: the start was refused, or not sent), or ``sent`` (not waited for).
    ``snapshot`` is the instance's state snapshot (its stable fields: ``instanceID``, ``workflowID``, ``version``,
    ``status``, ``input``, ``startRequest``, ``requests``) when one was read.
    """

    instance_id: str
    outcome: str
    partition: int
    request_id: str
    snapshot: Optional[Dict[str, Any]] = None
    reason: Optional[str] = None


class StartTimeout(TimeoutError):
    """The start was sent, but no coordinator applied it in time (is a coordinator running? is the workflow
    registered? see ``baton tail deadletter``)."""


class Client:
    """A producer and the reads a start needs. ``brokers``, ``namespace`` and ``kafka_config`` default to the
    ``BATON_*`` environment, as for :class:`baton_worker.Worker`."""

    def __init__(self, brokers: Optional[str] = None, namespace: Optional[str] = None,
                 kafka_config: Optional[Dict[str, Any]] = None, *, timeout: float = 10.0):
        self.settings = Settings.from_environment(brokers, namespace, kafka_config)
        self.timeout = timeout
        self._producer = Producer(self.settings.producer(**{"client.id": "baton-python-client"}))
        self._counts: Dict[str, int] = {}
        self._registered: Dict[str, set] = {}

    def close(self) -> None:
        self._producer.flush(self.timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- partitions
    def partition_count(self, topic: str) -> int:
        """The partition count of ``topic`` (cached); ``LookupError`` when it does not exist."""
        if topic not in self._counts:
            md = self._producer.list_topics(topic, timeout=self.timeout)
            t = md.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                why = t.error.str() if t is not None and t.error is not None else "no such topic"
                raise LookupError(f"topic '{topic}': {why} (run `baton topics apply` for namespace "
                                  f"'{self.settings.namespace}')")
            self._counts[topic] = len(t.partitions)
        return self._counts[topic]

    def registered_versions(self, workflow_id: str) -> List[int]:
        """The versions of ``workflow_id`` registered on ``<ns>.definitions``, read to its end (a registered
        version is kept: definitions are immutable)."""
        known = self._registered.get(workflow_id)
        if known:
            return sorted(known)
        topic = self.settings.topic("definitions")
        versions: Dict[str, set] = {}
        reader = _Reader(self.settings, topic, range(self.partition_count(topic)))
        try:
            def take(msg: Any) -> None:
                try:
                    record = json.loads(msg.value()) if msg.value() is not None else None
                except ValueError:
                    return  # not JSON, so not a definition: the coordinators' registry skips it too
                if isinstance(record, dict) and record.get("kind") == "definition" and isinstance(record.get("version"), int):
                    versions.setdefault(str(record.get("workflow_id")), set()).add(record["version"])
            if not reader.read_to_end(time.monotonic() + self.timeout, take):
                raise TimeoutError(f"could not read {topic} to its end within {self.timeout} s")
        finally:
            reader.close()
        for workflow, found in versions.items():
            self._registered.setdefault(workflow, set()).update(found)
        return sorted(self._registered.get(workflow_id, set()))

    def _check_registered(self, workflow_id: str, version: Optional[int]) -> None:
        """Refuses at once a start the coordinators would dead-letter as ``unknown workflow``."""
        versions = self.registered_versions(workflow_id)
        if version is not None and version in versions:
            return
        if version is None and versions:
            return
        if versions:
            raise LookupError(f"workflow '{workflow_id}' has no version {version} on {self.settings.topic('definitions')} "
                              f"(registered: {', '.join(map(str, versions))})")
        raise LookupError(f"workflow '{workflow_id}' is not registered on {self.settings.topic('definitions')}; "
                          "register it first: baton definitions register FILE")

    def partition_of(self, instance_id: str) -> int:
        """The ``events`` (and ``state``) partition of an instance: murmur2 of its id, as the engine computes it."""
        return protocol.partition_for(instance_id, self.partition_count(self.settings.topic("events")))

    # --- start
    def start(self, workflow_id: str, input: Any, *, instance_id: Optional[str] = None, version: Optional[int] = None,
              wait: Optional[float] = 30.0, request_id: Optional[str] = None) -> StartResult:
        """Starts ``workflow_id`` (its latest version unless ``version``) with ``input``.

        With ``wait`` (seconds; ``None`` or 0 sends and returns ``sent``), reads the instance's partition of
        ``<ns>.state`` to its end first: a snapshot found there means the instance exists already (``exists``
        or ``conflict``, without sending). Otherwise it sends the start and waits for the instance's first
        snapshot: ``created`` when its ``startRequest`` is this start's ``request_id``. Raises
        :class:`StartTimeout` when nothing shows in time, ``ValueError`` for an id or input over the limits,
        ``LookupError`` for a workflow (or version) not registered on ``<ns>.definitions``, before sending.
        """
        instance_id = instance_id or str(uuid.uuid4())
        request_id = request_id or str(uuid.uuid4())
        value = protocol.start_record(instance_id, workflow_id, input, version, int(time.time() * 1000), request_id)
        events = self.settings.topic("events")
        state = self.settings.topic("state")
        partition = self.partition_of(instance_id)
        self._check_registered(workflow_id, version)
        if not wait:
            self._send(events, partition, instance_id, value)
            return StartResult(instance_id, SENT, partition, request_id)
        state_count = self.partition_count(state)
        if state_count != self.partition_count(events):
            raise LookupError(f"'{state}' has {state_count} partitions and '{events}' {self.partition_count(events)}: "
                              "they must have the same count (co-partitioned by instance id)")
        reader = _StateReader(self.settings, state, partition, instance_id)
        try:
            deadline = time.monotonic() + wait
            found, snapshot = reader.latest(deadline)
            if not found:
                raise StartTimeout(f"could not read {state}[{partition}] to its end within {wait} s")
            if snapshot is not None:
                return self._judge(snapshot, instance_id, workflow_id, version, input, partition, request_id)
            self._send(events, partition, instance_id, value)
            snapshot = reader.next_snapshot(deadline)
            if snapshot is None:
                raise StartTimeout(
                    f"sent the start of '{instance_id}' ({workflow_id}) to {events}[{partition}], but no coordinator "
                    f"wrote its state within {wait} s: is a coordinator running, and is '{workflow_id}' registered "
                    f"in namespace '{self.settings.namespace}'? (`baton tail deadletter` shows refused starts)")
            return self._judge(snapshot, instance_id, workflow_id, version, input, partition, request_id)
        finally:
            reader.close()

    def _judge(self, snapshot: Dict[str, Any], instance_id: str, workflow_id: str, version: Optional[int], input: Any,
               partition: int, request_id: str) -> StartResult:
        if snapshot.get("startRequest") == request_id:
            return StartResult(instance_id, CREATED, partition, request_id, snapshot)
        differences = []
        if snapshot.get("workflowID") != workflow_id:
            differences.append(f"it runs workflow '{snapshot.get('workflowID')}'")
        if version is not None and snapshot.get("version") != version:
            differences.append(f"it runs version {snapshot.get('version')}")
        if not protocol.json_equal(snapshot.get("input"), input):
            differences.append("its input differs")
        if differences:
            return StartResult(instance_id, CONFLICT, partition, request_id, snapshot,
                               f"instance '{instance_id}' exists already: " + ", ".join(differences))
        return StartResult(instance_id, EXISTS, partition, request_id, snapshot)

    def _send(self, topic: str, partition: int, key: str, value: bytes) -> None:
        errors: List[KafkaError] = []

        def delivered(err: Optional[KafkaError], _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        self._producer.produce(topic, value=value, key=key.encode("utf-8"), partition=partition,
                               headers=protocol.headers_for("start", {}), on_delivery=delivered)
        remaining = self._producer.flush(self.timeout)
        if remaining:
            raise TimeoutError(f"the start was not acknowledged by the brokers within {self.timeout} s")
        if errors:
            raise KafkaException(errors[0])


class _Reader:
    """Reads partitions of a topic (read_committed) from their beginning.

    The end is found by partition EOF, not by a ListOffsets query (Tansu 0.6.0 answers that wrongly after a
    batched produce; docs/kafka-compatibility.md)."""

    def __init__(self, settings: Settings, topic: str, partitions: Iterable[int]):
        self.topic = topic
        self.consumer = Consumer(settings.consumer(
            f"{settings.namespace}.client-{uuid.uuid4()}",
            **{"enable.partition.eof": "true", "client.id": "baton-python-client"},
        ))
        self.partitions = set(partitions)
        self.consumer.assign([TopicPartition(topic, p, -2) for p in self.partitions])  # OFFSET_BEGINNING

    def read_to_end(self, deadline: float, take: Callable[[Any], None]) -> bool:
        """Gives every record to ``take`` until each partition's end; whether the ends were reached in time."""
        left = set(self.partitions)
        while left and time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    left.discard(msg.partition())
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("reading %s: %s", self.topic, err)
                continue
            take(msg)
        return not left

    def close(self) -> None:
        self.consumer.close()


class _StateReader(_Reader):
    """Reads one partition of ``state`` and follows one key."""

    def __init__(self, settings: Settings, topic: str, partition: int, key: str):
        super().__init__(settings, topic, [partition])
        self.key = key.encode("utf-8")

    def latest(self, deadline: float):
        """(reached the end, the key's latest snapshot or None)."""
        latest: List[Optional[Dict[str, Any]]] = [None]

        def take(msg: Any) -> None:
            if msg.key() == self.key:
                latest[0] = self._snapshot(msg)
        return self.read_to_end(deadline, take), latest[0]

    def next_snapshot(self, deadline: float) -> Optional[Dict[str, Any]]:
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", self.topic, msg.error())
                continue
            if msg.key() == self.key:
                snapshot = self._snapshot(msg)
                if snapshot is not None:
                    return snapshot
        return None

    def _snapshot(self, msg: Any) -> Optional[Dict[str, Any]]:
        try:
            return protocol.parse_snapshot(msg.value())
        except protocol.Unreadable as e:
            log.warning("%s[%d]@%d: %s", self.topic, msg.partition(), msg.offset(), e.reason)
            return None


def start(workflow_id: str, input: Any, *, instance_id: Optional[str] = None, version: Optional[int] = None,
          wait: Optional[float] = 30.0, brokers: Optional[str] = None, namespace: Optional[str] = None,
          kafka_config: Optional[Dict[str, Any]] = None) -> StartResult:
    """Starts one workflow instance with a client of its own (see :meth:`Client.start`)."""
    with Client(brokers, namespace, kafka_config) as client:
        return client.start(workflow_id, input, instance_id=instance_id, version=version, wait=wait)

"""A Baton worker: step handlers as members of their pools' consumer groups (docs/wire-protocol.md, "Worker").

One :class:`Worker` serves any number of pools. Each pool has its own consumer (group ``<ns>.workers.<pool>``
on ``<ns>.commands.<pool>``) polled by its own thread, which never blocks on a handler: commands run on
threads of their own, up to the pool's concurrency, while the poll loop goes on (pausing the partitions
when every slot is taken). A command's offset is committed only once it is done (its result acknowledged
by the broker, or it was skipped or dead-lettered): the commit point of a partition is the oldest command
still open there.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from . import protocol
from .config import Settings
from .protocol import Command, Unreadable

log = logging.getLogger("baton_worker")

#: Partitions of a command topic a worker creates when it is missing (as the engine does).
COMMAND_TOPIC_PARTITIONS = 12
#: Seconds an attempt runs before the worker reports its start (docs/wire-protocol.md, "Reporting the start").
START_REPORT_S = 0.5
#: Seconds every slot of a pool stays taken before its partitions are paused (see _PoolRunner._loop).
PAUSE_AFTER = 1.0


def small_fetch_queue(commands: int) -> Dict[str, str]:
    """librdkafka settings that keep about ``commands`` records fetched ahead; a fetch held back because the queue
    is full is tried again after 50 ms, not librdkafka's 1 s."""
    return {"queued.min.messages": str(max(1, commands)), "queued.max.messages.kbytes": "1024", "fetch.queue.backoff.ms": "50"}

Handler = Callable[["StepContext"], Any]


def now_ms() -> int:
    return int(time.time() * 1000)


class StepFailure(Exception):
    """Raise from a handler to fail the attempt with ``message``.

    ``retryable=False`` skips the remaining attempts (the workflow takes its failure path at once). Any other
    exception a handler raises fails the attempt as retryable, with the exception's type and text.
    For a compensation, ``retryable`` is not sent: a failed compensation is always tried again.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class StepContext:
    """What a handler is given: the command's fields, and heartbeats and shutdown for long steps."""

    def __init__(self, runner: "_PoolRunner", command: Command, headers: List[Tuple[str, Optional[bytes]]], partition: int, offset: int):
        self._runner = runner
        self.command = command
        self.kind = command.kind
        self.is_compensation = command.is_compensation
        self.instance_id = command.instance_id
        self.workflow_id = command.workflow_id
        self.workflow_version = command.workflow_version
        self.step = command.step
        self.type = command.type
        self.pool = command.pool
        self.item = command.item
        self.attempt = command.attempt
        self.input = command.input
        #: Epoch milliseconds after which the coordinator counts the attempt as timed out: the step's timeout
        #: from now, when the attempt starts (a coordinator of the release before sends the deadline itself).
        self.deadline = command.deadline if command.timeout is None else now_ms() + command.timeout
        #: Milliseconds, when the step has a ``heartbeat_timeout``.
        self.heartbeat_timeout = command.heartbeat_timeout
        #: The same for every attempt of the step (and item); use it so that side effects happen once.
        self.idempotency_key = command.idempotency_key
        #: The command record's headers, as received.
        self.headers = headers
        #: ``traceparent``/``tracestate`` put on the result and heartbeats: the command's, passed on. A
        #: handler that traces may replace them with its own span's context.
        self.trace_headers: Dict[str, bytes] = protocol.trace_headers(headers)
        self.partition = partition
        self.offset = offset
        self._stopping = runner.stopping_event

    # --- long steps
    def heartbeat(self, details: Any = None) -> None:
        """Shows the attempt is alive, with optional ``details`` (progress, at most 4 KiB of JSON).

        Heartbeats are sent no more often than a third of the step's ``heartbeat_timeout``: details given in
        between go with the next one. Nothing is sent for a step without a ``heartbeat_timeout`` or for a
        compensation (compensations have no heartbeats).
        """
        if details is not None:
            protocol.check_details(details)
        if self.heartbeat_timeout is None or self.is_compensation:
            return
        self._runner.worker._heartbeats.beat(self, details)

    @property
    def stopping(self) -> bool:
        """True once the worker is shutting down: finish soon, or the command is handed back to another worker."""
        return self._stopping.is_set()

    def wait_stopping(self, timeout: float) -> bool:
        """Sleeps up to ``timeout`` seconds, waking early (and returning True) when the worker shuts down."""
        return self._stopping.wait(timeout)

    @property
    def remaining_seconds(self) -> float:
        """Seconds left before the attempt's deadline (negative once it is past)."""
        return (self.deadline - now_ms()) / 1000.0

    def __repr__(self) -> str:
        item = f"#{self.item}" if self.item is not None else ""
        return f"StepContext({self.kind} {self.instance_id}/{self.step}{item} attempt {self.attempt})"


# ---------------------------------------------------------------------------------------------------------
# Producing


class _Delivery:
    __slots__ = ("event", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: Optional[KafkaError] = None

    def __call__(self, err: Optional[KafkaError], _msg: Any) -> None:
        self.error = err
        self.event.set()


#: Delivery errors that trying again cannot fix.
_PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_EXCEPTION,
}


class _Producer:
    """One idempotent producer (acks=all) shared by a worker's pools, polled by its own thread; replaced
    when it hits a fatal error."""

    def __init__(self, settings: Settings, client_id: str):
        self._settings = settings
        self._client_id = client_id
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._producer = self._make()
        self._thread = threading.Thread(target=self._poll, name="baton-producer-poll", daemon=True)
        self._thread.start()

    def _make(self) -> Producer:
        return Producer(self._settings.producer(**{"client.id": self._client_id, "error_cb": self._on_error}))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("the producer hit a fatal error (%s); replacing it", err)
            threading.Thread(target=self._replace, name="baton-producer-replace", daemon=True).start()
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("producer: %s", err)
        else:
            log.debug("producer: %s", err)

    def _replace(self) -> None:
        with self._lock:
            old = self._producer
            self._producer = self._make()
        try:
            old.purge()
            old.flush(0)
        except Exception:  # the old one is gone for good; its undelivered records fail their deliveries
            log.debug("dropping the old producer", exc_info=True)

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, value: Optional[bytes], key: Optional[bytes], partition: Optional[int], headers: Any, on_delivery: Callable) -> None:
        while True:
            try:
                with self._lock:
                    producer = self._producer
                if partition is None:
                    producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                else:
                    producer.produce(topic, value=value, key=key, partition=partition, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # the local queue is full: wait for deliveries
                time.sleep(0.01)

    def deliver(self, topic: str, value: Optional[bytes], key: Optional[bytes], partition: Optional[int], headers: Any,
                give_up: Callable[[], bool], what: str) -> Optional[KafkaError]:
        """Sends and waits for the broker's acknowledgement, trying again (and logging) until it is delivered,
        the error is permanent (returned), or ``give_up()``; then raises :class:`_GaveUp`."""
        backoff = 0.2
        while True:
            delivery = _Delivery()
            try:
                self.send(topic, value, key, partition, headers, delivery)
            except KafkaException as e:
                err = e.args[0]
                if err.code() in _PERMANENT:
                    return err
                delivery.error = err
                delivery.event.set()
            while not delivery.event.wait(0.1):
                if give_up():
                    raise _GaveUp()
            if delivery.error is None:
                return None
            if delivery.error.code() in _PERMANENT:
                return delivery.error
            log.warning("could not deliver %s to %s[%s]: %s; trying again", what, topic, partition, delivery.error)
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline:
                if give_up():
                    raise _GaveUp()
                time.sleep(0.05)
            backoff = min(backoff * 2, 5.0)

    def close(self, timeout: float) -> None:
        with self._lock:
            producer = self._producer
        remaining = producer.flush(timeout)
        if remaining:
            log.warning("%d records were still undelivered when the producer closed", remaining)
        self._closed.set()
        self._thread.join(1.0)


class _GaveUp(Exception):
    """The worker is shutting down and its grace period is over: the command is handed back."""


# ---------------------------------------------------------------------------------------------------------
# Heartbeats


class _Beat:
    __slots__ = ("ctx", "interval", "next_at", "last_sent", "details", "pending", "auto")

    def __init__(self, ctx: StepContext, auto: bool):
        self.ctx = ctx
        beating = ctx.heartbeat_timeout is not None
        self.interval = max(ctx.heartbeat_timeout / 3000.0, 0.1) if beating else float("inf")  # type: ignore[operator]
        self.auto = auto and beating
        self.last_sent: Optional[float] = None
        self.details: Any = None
        now = time.monotonic()
        if self.auto:
            self.pending, self.next_at = True, now
        elif ctx.command.timeout is not None:
            # The start report: a first heartbeat once the attempt has run START_REPORT_S (at once when its start
            # deadline is near); an attempt that ends sooner needs none (its result ends it).
            near = ctx.command.deadline - now_ms() < (START_REPORT_S + 2) * 1000
            self.pending, self.next_at = True, now if near else now + START_REPORT_S
        else:
            self.pending, self.next_at = False, float("inf")


class _Heartbeats:
    """Sends ``step.heartbeat`` records for running attempts: the start report (the attempt's first heartbeat,
    docs/wire-protocol.md), then, for steps with a ``heartbeat_timeout``, every third of the timeout (``auto``)
    and when a handler reports progress (at most that often)."""

    def __init__(self, producer: _Producer, auto: bool):
        self._producer = producer
        self._auto = auto
        self._beats: Dict[int, _Beat] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="baton-heartbeats", daemon=True)
        self._thread.start()

    def add(self, ctx: StepContext) -> None:
        with self._cond:
            self._beats[id(ctx)] = _Beat(ctx, self._auto)
            self._cond.notify()

    def remove(self, ctx: StepContext) -> None:
        with self._cond:
            self._beats.pop(id(ctx), None)

    def beat(self, ctx: StepContext, details: Any) -> None:
        with self._cond:
            b = self._beats.get(id(ctx))
            if b is None:
                return
            if details is not None:
                b.details = details
            b.pending = True
            now = time.monotonic()
            b.next_at = now if b.last_sent is None else max(now, b.last_sent + b.interval)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(1.0)

    def _run(self) -> None:
        while True:
            due: List[Tuple[StepContext, Any]] = []
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                wait = 1.0
                for b in self._beats.values():
                    if b.pending and b.next_at <= now:
                        due.append((b.ctx, b.details))
                        b.last_sent = now
                        b.pending = b.auto
                        b.next_at = now + b.interval if b.auto else float("inf")
                    if b.pending:
                        wait = min(wait, max(b.next_at - now, 0.0))
                if not due:
                    self._cond.wait(wait)
                    continue
            for ctx, details in due:
                self._send(ctx, details)

    def _send(self, ctx: StepContext, details: Any) -> None:
        cmd = ctx.command
        try:
            value = protocol.heartbeat(cmd, details)
        except ValueError as e:
            log.error("heartbeat of %s not sent: %s", ctx, e)
            return

        def delivered(err: Optional[KafkaError], _msg: Any) -> None:
            if err is not None:
                log.warning("heartbeat of %s not delivered: %s", ctx, err)

        self._producer.send(cmd.reply_topic, value, cmd.instance_id.encode("utf-8"), cmd.reply_partition,
                            protocol.headers_for("step.heartbeat", ctx.trace_headers), delivered)


# ---------------------------------------------------------------------------------------------------------
# One pool


class _Partition:
    """What a member knows of one assigned partition: the offsets still open (received, not done)."""

    __slots__ = ("open", "next", "committed")

    def __init__(self) -> None:
        self.open: Set[int] = set()
        self.next: Optional[int] = None  # the offset after the last one received
        self.committed: Optional[int] = None

    def commit_point(self) -> Optional[int]:
        return min(self.open) if self.open else self.next


class _Job:
    __slots__ = ("partition", "offset", "message")

    def __init__(self, message: Any):
        self.partition: int = message.partition()
        self.offset: int = message.offset()
        self.message = message


class _PoolRunner:
    def __init__(self, worker: "Worker", pool: str, handlers: Dict[str, Handler], concurrency: int):
        self.worker = worker
        self.pool = pool
        self.handlers = handlers
        self.concurrency = concurrency
        self.settings = worker.settings
        self.topic = self.settings.commands_topic(pool)
        self.group = self.settings.workers_group(pool)
        self.stopping_event = threading.Event()  # handlers see it: the worker is shutting down
        self.abandon = threading.Event()  # the grace period is over: hand back what still runs
        self.partitions: Dict[int, _Partition] = {}
        self.backlog: Deque[_Job] = deque()
        self.running: Dict[Tuple[int, int], threading.Thread] = {}
        self.done: "deque[Tuple[int, int, bool]]" = deque()
        self.slot_freed = threading.Event()  # set by a command's thread when it is done
        self.paused: Optional[bool] = None  # None: not known (after an assignment): set it explicitly
        self.assigned_once = threading.Event()
        self.consumer: Optional[Consumer] = None
        self.thread = threading.Thread(target=self._main, name=f"baton-pool-{pool}", daemon=True)
        self.error: Optional[BaseException] = None
        self._retry_commit_at = 0.0

    # --- the poll loop (one thread; the consumer is used from it alone)
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a fatal consumer error: the worker stops, run() raises it
            log.error("pool %s: %s", self.pool, e)
            self.error = e
            self.worker._stop_requested.set()

    def _loop(self) -> None:
        conf = self.settings.consumer(self.group, **{
            "client.id": f"{self.worker.client_id}-{self.pool}",
            "on_commit": self._on_commit,
            "error_cb": self._on_error,
        })
        # librdkafka's own fetch queue about as small as the pool's (its defaults prefetch up to 100,000 records or
        # 64 MiB): what the pool cannot start soon stays in Kafka, as the group's lag. The Kafka config may say otherwise.
        for key, value in small_fetch_queue(self.concurrency).items():
            if key not in self.settings.kafka_config:
                conf[key] = value
        consumer = Consumer(conf)
        self.consumer = consumer
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("pool %s: consuming %s in group %s (concurrency %d)", self.pool, self.topic, self.group, self.concurrency)
        grace_deadline = None
        full_since: Optional[float] = None
        try:
            while True:
                self.slot_freed.clear()  # before collecting: a command done from here on wakes the wait below
                if self.worker._stop_requested.is_set() and grace_deadline is None:
                    grace_deadline = time.monotonic() + self.worker.grace_seconds
                    self.stopping_event.set()
                    log.info("pool %s: stopping; %d commands running, %g seconds to finish", self.pool,
                             len(self.running), self.worker.grace_seconds)
                self._collect()
                if grace_deadline is not None:
                    if not self.running:
                        break
                    if time.monotonic() >= grace_deadline:
                        log.warning("pool %s: %d commands still running after the grace period are handed back "
                                    "(not committed: they will be delivered again)", self.pool, len(self.running))
                        self.abandon.set()
                        break
                else:
                    self._dispatch()
                # Every slot taken: take nothing more. Only when that lasts PAUSE_AFTER (long steps) are the
                # partitions paused: a pause makes librdkafka drop what it fetched and deliver nothing for about a
                # second after the resume, which slows a stream of short steps about tenfold.
                now = time.monotonic()
                full = len(self.running) + len(self.backlog) >= self.concurrency
                full_since = (now if full_since is None else full_since) if full else None
                full_for = 0.0 if full_since is None else now - full_since
                self._set_paused(grace_deadline is not None or full_for >= PAUSE_AFTER)
                self._commit(asynchronous=True)
                if full and full_for < PAUSE_AFTER and grace_deadline is None:
                    # librdkafka's queue (as small) holds what it fetched; rebalances wait for the next poll.
                    self.slot_freed.wait(min(0.05, PAUSE_AFTER - full_for))
                    continue
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("pool %s: %s", self.pool, err)
                    continue
                self._accept(msg)
        finally:
            self._collect()
            try:
                self._commit(asynchronous=False)
            except KafkaException as e:
                log.warning("pool %s: the last commit failed: %s", self.pool, e)
            consumer.close()
            log.info("pool %s: left group %s", self.pool, self.group)

    def _accept(self, msg: Any) -> None:
        p, o = msg.partition(), msg.offset()
        part = self.partitions.get(p)
        if part is None:
            return  # from a partition no longer ours
        if part.next is not None and o < part.next:
            return  # seen already (delivered again after a pause)
        part.next = o + 1
        part.open.add(o)
        if (p, o) in self.running:
            return  # still running from before a rebalance gave the partition back to us: adopt it
        self.backlog.append(_Job(msg))

    def _dispatch(self) -> None:
        while self.backlog and len(self.running) < self.concurrency:
            job = self.backlog.popleft()
            key = (job.partition, job.offset)
            if job.partition not in self.partitions or key in self.running:
                continue
            t = threading.Thread(target=self._run_job, args=(job,), name=f"baton-{self.pool}-{job.partition}@{job.offset}", daemon=True)
            self.running[key] = t
            t.start()

    def _collect(self) -> None:
        while self.done:
            p, o, ok = self.done.popleft()
            self.running.pop((p, o), None)
            part = self.partitions.get(p)
            if ok and part is not None:
                part.open.discard(o)

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused or self.consumer is None:
            return
        assignment = self.consumer.assignment()
        if not assignment:
            return
        if paused:
            self.consumer.pause(assignment)
        else:
            self.consumer.resume(assignment)
        self.paused = paused

    def _commit(self, asynchronous: bool, only: Optional[List[int]] = None) -> None:
        if self.consumer is None:
            return
        if asynchronous and time.monotonic() < self._retry_commit_at:
            return
        offsets = []
        chosen = [p for p in self.partitions if only is None or p in only]
        # Where nothing is open, commit the consumer's position: past the last command received, and past
        # transaction markers after it (which a coordinator's transactions leave on the command topics).
        idle = [TopicPartition(self.topic, p) for p in chosen if not self.partitions[p].open]
        positions = {tp.partition: tp.offset for tp in self.consumer.position(idle)} if idle else {}
        for p in chosen:
            part = self.partitions[p]
            point = part.commit_point()
            position = positions.get(p, -1)
            if not part.open and position >= 0 and (point is None or position > point):
                point = position
            if point is not None and (part.committed is None or point > part.committed):
                offsets.append(TopicPartition(self.topic, p, point))
                part.committed = point
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)

    def _on_commit(self, err: Optional[KafkaError], partitions: List[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None] if err is None else partitions
        if err is None and not failed:
            return
        log.warning("pool %s: commit failed (%s); trying again", self.pool, err or failed[0].error)
        for tp in failed:
            part = self.partitions.get(tp.partition)
            if part is not None:
                part.committed = None
        self._retry_commit_at = time.monotonic() + 1.0

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("pool %s: fatal consumer error: %s", self.pool, err)
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("pool %s: %s", self.pool, err)
        else:
            log.debug("pool %s: %s", self.pool, err)

    def _on_assign(self, consumer: Consumer, partitions: List[TopicPartition]) -> None:
        for tp in partitions:
            self.partitions[tp.partition] = _Partition()
        self.paused = None
        log.info("pool %s: assigned partitions %s", self.pool, sorted(tp.partition for tp in partitions))
        self.assigned_once.set()

    def _on_revoke(self, consumer: Consumer, partitions: List[TopicPartition]) -> None:
        self._collect()
        revoked = [tp.partition for tp in partitions]
        try:
            self._commit(asynchronous=False, only=revoked)
        except KafkaException as e:
            log.warning("pool %s: commit at revocation failed: %s", self.pool, e)
        self._forget(revoked)
        log.info("pool %s: revoked partitions %s", self.pool, sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: List[TopicPartition]) -> None:
        self._forget([tp.partition for tp in partitions])
        log.warning("pool %s: lost partitions %s", self.pool, sorted(tp.partition for tp in partitions))

    def _forget(self, partitions: List[int]) -> None:
        for p in partitions:
            self.partitions.pop(p, None)
        self.backlog = deque(j for j in self.backlog if j.partition not in partitions)
        self.paused = None

    # --- one command (on its own thread)
    def _run_job(self, job: _Job) -> None:
        ok = False
        try:
            ok = self._handle(job)
        except _GaveUp:
            log.info("pool %s: handing back %s[%d]@%d", self.pool, self.topic, job.partition, job.offset)
        except Exception:
            log.exception("pool %s: command at %s[%d]@%d could not be handled; it will be delivered again",
                          self.pool, self.topic, job.partition, job.offset)
        finally:
            self.done.append((job.partition, job.offset, ok))
            self.slot_freed.set()

    def _handle(self, job: _Job) -> bool:
        msg = job.message
        give_up = self.abandon.is_set
        try:
            command = protocol.parse_command(msg.value())
        except Unreadable as e:
            self.worker._deadletter(msg, "unreadable", e.reason, give_up)
            return True
        if command.past_deadline(now_ms()):
            log.info("pool %s: skipping %s %s/%s attempt %d: its deadline passed %d ms ago", self.pool, command.kind,
                     command.instance_id, command.step, command.attempt, now_ms() - command.deadline)
            return True
        ctx = StepContext(self, command, msg.headers() or [], job.partition, job.offset)
        log.debug("pool %s: handling command %s %s/%s attempt %d", self.pool, command.kind, command.instance_id,
                  command.step, command.attempt)
        # Heartbeats, and the start report of a step that runs longer than START_REPORT_S.
        beats = not command.is_compensation and (command.heartbeat_timeout is not None or command.timeout is not None)
        if beats:
            self.worker._heartbeats.add(ctx)
        try:
            handler = self.handlers.get(command.kind)
            if handler is None:
                what = "compensation" if command.is_compensation else "step"
                raise StepFailure(f"this worker of pool '{self.pool}' has no {what} handler", retryable=True)
            output = handler(ctx)
            kind, value = protocol.completed(command, output)
        except StepFailure as f:
            kind, value = protocol.failed(command, f.message, f.retryable)
        except Exception as e:
            log.warning("pool %s: %s raised %s: %s", self.pool, ctx, type(e).__name__, e, exc_info=True)
            kind, value = protocol.failed(command, f"{type(e).__name__}: {e}", retryable=True)
        finally:
            if beats:
                self.worker._heartbeats.remove(ctx)
        if self.abandon.is_set():
            raise _GaveUp()  # finished after the grace period: it was handed back (not committed) already
        headers = protocol.headers_for(kind, ctx.trace_headers)
        err = self.worker._producer.deliver(command.reply_topic, value, command.instance_id.encode("utf-8"),
                                            command.reply_partition, headers, give_up, f"the {kind} of {ctx}")
        if err is not None:
            self.worker._deadletter(msg, "undeliverable", f"its result could not be delivered to {command.reply_topic}"
                                         f"[{command.reply_partition}]: {err.str()}", give_up)
        else:
            log.debug("pool %s: %s for %s delivered", self.pool, kind, ctx)
        return True


# ---------------------------------------------------------------------------------------------------------
# The worker


class Worker:
    """Serves one or more pools.

    ::

        worker = Worker()                       # BATON_BROKERS, BATON_NAMESPACE, BATON_KAFKA_CONFIG

        @worker.step("payments.charge")
        def charge(ctx):
            if ctx.input["amount"] <= 0:
                raise StepFailure("no amount", retryable=False)
            return {"payment_id": payments.charge(ctx.input["amount"], key=ctx.idempotency_key)}

        worker.run()                            # until SIGTERM or SIGINT

    ``concurrency`` is how many commands of a pool run at once (per pool; ``step(..., concurrency=N)``
    overrides it). ``grace_seconds`` is how long running commands may finish after a shutdown begins; the
    rest are handed back. ``auto_heartbeat`` sends heartbeats for steps that have a ``heartbeat_timeout``
    while their handler runs (every third of the timeout); handlers can add progress with
    ``ctx.heartbeat(details)``. ``create_topics`` creates a missing command topic (12 partitions).
    """

    def __init__(
        self,
        brokers: Optional[str] = None,
        namespace: Optional[str] = None,
        kafka_config: Optional[Dict[str, Any]] = None,
        *,
        concurrency: int = 8,
        grace_seconds: float = 10.0,
        auto_heartbeat: bool = True,
        create_topics: bool = True,
        fetch_wait_ms: Optional[int] = None,
        client_id: Optional[str] = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.settings = Settings.from_environment(brokers, namespace, kafka_config, fetch_wait_ms)
        self.concurrency = concurrency
        self.grace_seconds = grace_seconds
        self.auto_heartbeat = auto_heartbeat
        self.create_topics = create_topics
        self.client_id = client_id or f"baton-worker-{socket.gethostname()}-{os.getpid()}"
        self._pools: Dict[str, Dict[str, Handler]] = {}
        self._concurrency: Dict[str, int] = {}
        self._runners: List[_PoolRunner] = []
        self._stop_requested = threading.Event()
        self._started = False
        self._producer: _Producer = None  # type: ignore[assignment]
        self._heartbeats: _Heartbeats = None  # type: ignore[assignment]

    # --- registering handlers
    def step(self, pool: str, *, concurrency: Optional[int] = None) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(ctx)`` runs the pool's ``step.command`` records; it returns the step's output
        (any JSON value) or raises :class:`StepFailure`."""
        def register(handler: Handler) -> Handler:
            self.add(pool, handler, concurrency=concurrency)
            return handler
        return register

    def compensation(self, pool: str, *, concurrency: Optional[int] = None) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(ctx)`` runs the pool's ``compensation.command`` records (undoing
        ``ctx.step``); what it returns is ignored; raising fails the compensation attempt (it is retried)."""
        def register(handler: Handler) -> Handler:
            self.add(pool, handler, compensation=True, concurrency=concurrency)
            return handler
        return register

    def add(self, pool: str, handler: Handler, *, compensation: bool = False, concurrency: Optional[int] = None) -> None:
        if self._started:
            raise RuntimeError("handlers must be added before the worker starts")
        if not pool or not all(c.isalnum() or c in "._-" for c in pool):
            raise ValueError(f"pool '{pool}': only letters, digits, '.', '_' and '-' can be in a topic name")
        kind = protocol.COMPENSATION_COMMAND if compensation else protocol.STEP_COMMAND
        handlers = self._pools.setdefault(pool, {})
        if kind in handlers:
            raise ValueError(f"pool '{pool}' has a {kind} handler already")
        handlers[kind] = handler
        if concurrency is not None:
            if concurrency < 1:
                raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
            self._concurrency[pool] = concurrency

    @property
    def pools(self) -> List[str]:
        return sorted(self._pools)

    @property
    def ready(self) -> bool:
        """True once every pool's consumer has had its first assignment from the group."""
        return self._started and all(r.assigned_once.is_set() for r in self._runners)

    # --- running
    def start(self) -> None:
        """Starts serving in background threads; :meth:`stop` ends it."""
        if self._started:
            raise RuntimeError("the worker has started already")
        if not self._pools:
            raise RuntimeError("no handlers: add one with @worker.step(pool) or @worker.compensation(pool)")
        if self.create_topics:
            self._create_missing_topics()
        self._producer = _Producer(self.settings, self.client_id)
        self._heartbeats = _Heartbeats(self._producer, self.auto_heartbeat)
        self._runners = [_PoolRunner(self, pool, handlers, self._concurrency.get(pool, self.concurrency))
                         for pool, handlers in sorted(self._pools.items())]
        self._started = True
        for r in self._runners:
            r.thread.start()

    def stop(self) -> None:
        """Begins a graceful shutdown: no new commands; running ones get ``grace_seconds`` to finish."""
        self._stop_requested.set()

    def join(self) -> None:
        """Waits until every pool has stopped, then closes the producer. Raises a pool's fatal error."""
        for r in self._runners:
            while r.thread.is_alive():
                r.thread.join(0.2)
        if self._heartbeats is not None:
            self._heartbeats.close()
        if self._producer is not None:
            self._producer.close(5.0)
        for r in self._runners:
            if r.error is not None:
                raise r.error

    def run(self, install_signal_handlers: bool = True) -> None:
        """Serves until SIGTERM or SIGINT (or :meth:`stop`), then shuts down gracefully."""
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda signum, _frame: self._on_signal(signum))
        try:
            self.start()
            while not self._stop_requested.wait(0.2):
                pass
            self.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop()

    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.join()

    # --- helpers
    def _create_missing_topics(self) -> None:
        admin = AdminClient(self.settings.common())
        wanted = [self.settings.commands_topic(p) for p in self._pools]
        existing = admin.list_topics(timeout=10).topics
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        futures = admin.create_topics([NewTopic(t, num_partitions=COMMAND_TOPIC_PARTITIONS) for t in missing], operation_timeout=10)
        for topic, future in futures.items():
            try:
                future.result(15)
                log.info("created %s (%d partitions)", topic, COMMAND_TOPIC_PARTITIONS)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def _deadletter(self, msg: Any, code: str, reason: str, give_up: Callable[[], bool]) -> None:
        value = msg.value()
        size = len(value) if value is not None else 0
        topic = self.settings.topic("deadletter")
        headers = protocol.deadletter_headers(msg.headers(), reason, msg.topic(), msg.partition(), msg.offset(), size, code)
        log.warning("dead-lettering %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        err = self._producer.deliver(topic, protocol.deadletter_value(value), msg.key(), None, headers, give_up,
                                     f"the dead letter of {msg.topic()}[{msg.partition()}]@{msg.offset()}")
        if err is not None:
            # Nothing more can be done with it: say so loudly, and go on (a consumer loop never dies on a record).
            log.error("the dead letter of %s[%d]@%d could not be written to %s: %s", msg.topic(), msg.partition(),
                      msg.offset(), topic, err.str())

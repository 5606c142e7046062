"""Baton's wire protocol, version 1 (docs/wire-protocol.md): records in and out, with no I/O.

Everything here is pure: reading a command, writing a result, heartbeat, dead letter or start, the limits,
and the partitioner. The Kafka side is in :mod:`baton_worker.worker` and :mod:`baton_worker.client`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

VERSION = 1

#: A step result whose record value is over this many bytes fails the step, not retryable.
MAX_RESULT_BYTES = 256 * 1024
#: A start whose ``input`` (as JSON) is over this many bytes is refused.
MAX_START_INPUT_BYTES = 256 * 1024
#: Values over this are refused by the engine.
MAX_RECORD_BYTES = 1024 * 1024
#: ``error`` texts are cut to this many bytes (UTF-8).
MAX_ERROR_BYTES = 4 * 1024
#: Heartbeat ``details`` over this many bytes (as JSON) are refused.
MAX_DETAILS_BYTES = 4 * 1024
#: Objects and arrays may nest at most this deep.
MAX_DEPTH = 128
#: A dead letter carries at most this much of the refused value.
MAX_DEADLETTER_VALUE_BYTES = 512 * 1024
#: A command more than this many milliseconds past its deadline is skipped (clocks may differ a little).
DEADLINE_GRACE_MS = 1000
#: Instance ids: at most this many bytes of UTF-8, no control characters.
MAX_INSTANCE_ID_BYTES = 200

STEP_COMMAND = "step.command"
COMPENSATION_COMMAND = "compensation.command"
COMMAND_KINDS = (STEP_COMMAND, COMPENSATION_COMMAND)

SNAPSHOT_MAGIC = 0xBA
SNAPSHOT_FORMAT = 1

TRACE_HEADERS = ("traceparent", "tracestate")


class Unreadable(ValueError):
    """A record that cannot be read; ``reason`` is what goes into ``baton-dlq-reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------
# JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(data: bytes) -> Any:
    """Strict JSON from UTF-8 bytes (no NaN or Infinity); raises :class:`Unreadable` with the reason."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8: {e}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Unreadable(f"not JSON: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise Unreadable(f"not JSON: {e}") from None
    depth = json_depth(value)
    if depth > MAX_DEPTH:
        raise Unreadable(f"nested {depth} levels deep; at most {MAX_DEPTH} are allowed")
    return value


def json_depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (a scalar is 0, ``{}`` and ``[]`` are 1)."""
    depth = 0
    stack: List[Tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON. Raises ``ValueError`` (or ``TypeError``) for what JSON cannot hold."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: key order does not matter, ``true`` is not ``1``, ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------------------------------------
# Partitioning


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's default partitioner), as an unsigned 32-bit value."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: str, partition_count: int) -> int:
    """The partition of a record keyed ``key``: ``(murmur2(utf8(key)) & 0x7fffffff) % partition_count``."""
    if partition_count <= 0:
        raise ValueError(f"partition count must be positive, not {partition_count}")
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partition_count


# ---------------------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class Command:
    """A ``step.command`` or ``compensation.command``, as read from a pool's command topic."""

    kind: str
    instance_id: str
    workflow_id: str
    workflow_version: int
    step: str
    type: str
    pool: str
    attempt: int
    input: Any
    deadline: int
    idempotency_key: str
    reply_topic: str
    reply_partition: int
    item: Optional[int] = None
    heartbeat_timeout: Optional[int] = None
    #: Milliseconds the attempt may run once the worker started it (its start report); None for a compensation
    #: and from a coordinator of the release before.
    timeout: Optional[int] = None
    #: The attempt's result token (opaque): echoed unchanged in the attempt's result and heartbeats. None from a
    #: coordinator of the release before tokens; then the answers carry none either.
    token: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_compensation(self) -> bool:
        return self.kind == COMPENSATION_COMMAND

    def past_deadline(self, now_ms: int, grace_ms: int = DEADLINE_GRACE_MS) -> bool:
        """Whether the attempt may no longer start (allowing ``grace_ms``): a step's ``deadline`` is the end of its
        ``queue_timeout`` (9999-12-31 without one), and the coordinator has counted the attempt as failed."""
        return now_ms > self.deadline + grace_ms


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and math.isfinite(v) and v.is_integer()


def _require(obj: Dict[str, Any], name: str, what: str, where: str = "") -> Any:
    label = f"{where}{name}"
    if name not in obj or obj[name] is None:
        raise Unreadable(f"field '{label}' is missing")
    v = obj[name]
    if what == "string":
        if not isinstance(v, str):
            raise Unreadable(f"field '{label}' is not a string")
        if v == "":
            raise Unreadable(f"field '{label}' is empty")
        return v
    if what in ("int", "positive", "natural"):
        if not _is_int(v):
            raise Unreadable(f"field '{label}' is not an integer")
        v = int(v)
        if what == "positive" and v < 1:
            raise Unreadable(f"field '{label}' is {v}; it must be 1 or more")
        if what == "natural" and v < 0:
            raise Unreadable(f"field '{label}' is {v}; it must be 0 or more")
        return v
    if what == "object":
        if not isinstance(v, dict):
            raise Unreadable(f"field '{label}' is not an object")
        return v
    raise AssertionError(what)


def _optional_int(obj: Dict[str, Any], name: str, minimum: int) -> Optional[int]:
    v = obj.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise Unreadable(f"field '{name}' is not an integer")
    v = int(v)
    if v < minimum:
        raise Unreadable(f"field '{name}' is {v}; it must be {minimum} or more")
    return v


def _optional_string(obj: Dict[str, Any], name: str) -> Optional[str]:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise Unreadable(f"field '{name}' is not a string")
    return v


def parse_command(value: Optional[bytes]) -> Command:
    """Reads a command record's value; raises :class:`Unreadable` with the reason when it cannot."""
    if value is None:
        raise Unreadable("the value is null (a tombstone), not a command")
    if len(value) == 0:
        raise Unreadable("the value is empty, not a command")
    obj = decode_json(value)
    if not isinstance(obj, dict):
        raise Unreadable(f"not a JSON object but {type(obj).__name__}")
    if "v" not in obj or obj["v"] is None:
        raise Unreadable("field 'v' is missing")
    if not _is_int(obj["v"]) or int(obj["v"]) != VERSION:
        raise Unreadable(f"unsupported protocol version v={json.dumps(obj['v'])}; this worker reads v=1")
    kind = _require(obj, "kind", "string")
    if kind not in COMMAND_KINDS:
        raise Unreadable(f"unknown kind '{kind}' on a command topic (expected step.command or compensation.command)")
    reply_to = _require(obj, "reply_to", "object")
    if "input" not in obj:
        raise Unreadable("field 'input' is missing")
    return Command(
        kind=kind,
        instance_id=_require(obj, "instance_id", "string"),
        workflow_id=_require(obj, "workflow_id", "string"),
        workflow_version=_require(obj, "workflow_version", "int"),
        step=_require(obj, "step", "string"),
        type=_require(obj, "type", "string"),
        pool=_require(obj, "pool", "string"),
        attempt=_require(obj, "attempt", "positive"),
        input=obj["input"],
        deadline=_require(obj, "deadline", "int"),
        idempotency_key=_require(obj, "idempotency_key", "string"),
        reply_topic=_require(reply_to, "topic", "string", "reply_to."),
        reply_partition=_require(reply_to, "partition", "natural", "reply_to."),
        item=_optional_int(obj, "item", 0),
        heartbeat_timeout=_optional_int(obj, "heartbeat_timeout", 1),
        timeout=_optional_int(obj, "timeout", 1),
        token=_optional_string(obj, "token"),
        raw=obj,
    )


# ---------------------------------------------------------------------------------------------------------
# Results and heartbeats


def _answer(command: Command, kind: str) -> Dict[str, Any]:
    record: Dict[str, Any] = {"v": VERSION, "kind": kind, "instance_id": command.instance_id, "step": command.step}
    if command.item is not None:
        record["item"] = command.item
    record["attempt"] = command.attempt
    if command.token is not None:
        # Echoed as it came: a coordinator that requires tokens dead-letters an answer without its command's.
        record["token"] = command.token
    return record


def completed(command: Command, output: Any) -> Tuple[str, bytes]:
    """The answer to a command that succeeded: ``(kind, value)``.

    For a step, an output that is not JSON, nests too deep, or makes the record larger than 256 KiB gives a
    ``step.failed`` with ``retryable: false`` instead (as the engine would fail the step anyway).
    A compensation's answer has no output.
    """
    if command.is_compensation:
        record = _answer(command, "compensation.completed")
        record["idempotency_key"] = command.idempotency_key
        return record["kind"], encode_json(record)
    record = _answer(command, "step.completed")
    record["output"] = output
    record["idempotency_key"] = command.idempotency_key
    try:
        value = encode_json(record)
    except (TypeError, ValueError) as e:
        return failed(command, f"the step's output is not JSON: {e}", retryable=False)
    depth = json_depth(output)
    if depth > MAX_DEPTH:
        return failed(command, f"the step's output nests {depth} levels deep; at most {MAX_DEPTH} are allowed", retryable=False)
    if len(value) > MAX_RESULT_BYTES:
        return failed(
            command,
            f"the step's output is too large: its result would be {len(value)} bytes, over the limit of "
            f"{MAX_RESULT_BYTES} bytes (256 KiB)",
            retryable=False,
        )
    return record["kind"], value


def failed(command: Command, error: str, retryable: bool = True) -> Tuple[str, bytes]:
    """The answer to a command that failed: ``(kind, value)``; ``retryable`` only applies to steps."""
    kind = "compensation.failed" if command.is_compensation else "step.failed"
    record = _answer(command, kind)
    record["error"] = cut_utf8(error or "failed", MAX_ERROR_BYTES)
    if not command.is_compensation:
        record["retryable"] = bool(retryable)
    record["idempotency_key"] = command.idempotency_key
    return kind, encode_json(record)


def heartbeat(command: Command, details: Any = None) -> bytes:
    """A ``step.heartbeat`` for ``command``'s attempt, with optional ``details`` (at most 4 KiB of JSON)."""
    record = _answer(command, "step.heartbeat")
    if details is not None:
        check_details(details)
        record["details"] = details
    return encode_json(record)


def check_details(details: Any) -> bytes:
    """``details`` as JSON, or ``ValueError`` when they are not JSON or over 4 KiB."""
    try:
        data = encode_json(details)
    except (TypeError, ValueError) as e:
        raise ValueError(f"heartbeat details are not JSON: {e}") from None
    if len(data) > MAX_DETAILS_BYTES:
        raise ValueError(f"heartbeat details are {len(data)} bytes of JSON; at most {MAX_DETAILS_BYTES} are allowed")
    return data


def headers_for(kind: str, trace: Dict[str, bytes]) -> List[Tuple[str, bytes]]:
    """Headers of a record Baton reads: ``baton-kind``, ``baton-v`` and the trace context passed on."""
    headers = [("baton-kind", kind.encode("utf-8")), ("baton-v", str(VERSION).encode("ascii"))]
    headers.extend((k, v) for k, v in trace.items() if v is not None)
    return headers


def trace_headers(headers: Optional[List[Tuple[str, Optional[bytes]]]]) -> Dict[str, bytes]:
    """The command's ``traceparent`` and ``tracestate`` (the last of each key; keys are case-sensitive)."""
    found: Dict[str, bytes] = {}
    for key, value in headers or []:
        if key in TRACE_HEADERS and value is not None:
            found[key] = value
    return found


# ---------------------------------------------------------------------------------------------------------
# Dead letters


def deadletter_headers(
    original: Optional[List[Tuple[str, Optional[bytes]]]],
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    size: int,
    code: str = "unreadable",
) -> List[Tuple[str, Optional[bytes]]]:
    """The refused record's headers plus ``baton-dlq-*`` (``baton-dlq-size`` only when the value is cut);
    ``code`` is the machine-readable reason (``baton-dlq-code``: ``unreadable``, ``not_a_command``)."""
    headers: List[Tuple[str, Optional[bytes]]] = [(k, v) for k, v in (original or []) if not k.startswith("baton-dlq-")]
    headers += [
        ("baton-dlq-code", code.encode("ascii")),
        ("baton-dlq-reason", cut_utf8(reason, MAX_ERROR_BYTES).encode("utf-8")),
        ("baton-dlq-topic", topic.encode("utf-8")),
        ("baton-dlq-partition", str(partition).encode("ascii")),
        ("baton-dlq-offset", str(offset).encode("ascii")),
    ]
    if size > MAX_DEADLETTER_VALUE_BYTES:
        headers.append(("baton-dlq-size", str(size).encode("ascii")))
    return headers


def deadletter_value(value: Optional[bytes]) -> Optional[bytes]:
    """At most 512 KiB of the refused value (null stays null)."""
    if value is None:
        return None
    return value[:MAX_DEADLETTER_VALUE_BYTES]


# ---------------------------------------------------------------------------------------------------------
# Starts and state snapshots


def check_instance_id(instance_id: str) -> None:
    """``ValueError`` naming what is wrong with an instance id (at most 200 bytes of UTF-8, no control characters)."""
    if not isinstance(instance_id, str) or instance_id == "":
        raise ValueError("the instance id is empty")
    size = len(instance_id.encode("utf-8"))
    if size > MAX_INSTANCE_ID_BYTES:
        raise ValueError(f"the instance id is {size} bytes of UTF-8; at most {MAX_INSTANCE_ID_BYTES} are allowed")
    for i, ch in enumerate(instance_id):
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            raise ValueError(f"the instance id has a control character (U+{ord(ch):04X}) at position {i}")


def start_record(
    instance_id: str, workflow_id: str, input: Any, version: Optional[int], sent_at: int, request_id: str
) -> bytes:
    """A ``start`` record's value; ``ValueError`` when the id or the input break the limits."""
    check_instance_id(instance_id)
    if not isinstance(workflow_id, str) or workflow_id == "":
        raise ValueError("the workflow id is empty")
    try:
        input_bytes = encode_json(input)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the input is not JSON: {e}") from None
    if len(input_bytes) > MAX_START_INPUT_BYTES:
        raise ValueError(f"the input is {len(input_bytes)} bytes of JSON; at most {MAX_START_INPUT_BYTES} (256 KiB) are allowed")
    depth = json_depth(input)
    if depth > MAX_DEPTH - 1:
        raise ValueError(f"the input nests {depth} levels deep; at most {MAX_DEPTH - 1} fit in a record")
    record: Dict[str, Any] = {"v": VERSION, "kind": "start", "instance_id": instance_id, "workflow_id": workflow_id}
    if version is not None:
        record["version"] = version
    record.update({"input": input, "sent_at": sent_at, "request_id": request_id})
    return encode_json(record)


def parse_snapshot(value: Optional[bytes]) -> Optional[Dict[str, Any]]:
    """A state snapshot (``0xBA``, format ``1``, then JSON); ``None`` for a tombstone.

    Raises :class:`Unreadable` for anything else.
    """
    if value is None:
        return None
    if len(value) < 2 or value[0] != SNAPSHOT_MAGIC:
        raise Unreadable("not a state snapshot (it does not start with 0xBA)")
    if value[1] != SNAPSHOT_FORMAT:
        raise Unreadable(f"state snapshot format {value[1]}; this client reads format {SNAPSHOT_FORMAT}")
    snapshot = decode_json(value[2:])
    if not isinstance(snapshot, dict):
        raise Unreadable("a state snapshot that is not a JSON object")
    return snapshot

"""Where the cluster is and how to reach it: ``BATON_BROKERS``, ``BATON_NAMESPACE``, ``BATON_KAFKA_CONFIG``,
``BATON_FETCH_WAIT``, as every Baton program reads them (docs/operations.md)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

DEFAULT_BROKERS = "127.0.0.1:9092"
DEFAULT_NAMESPACE = "baton"
DEFAULT_FETCH_WAIT_MS = 5

#: Settings the library's guarantees rest on: a Kafka config file or dict may not change them.
GUARDED_SETTINGS = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "transactional.id",
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "enable.partition.eof",
        "fetch.wait.max.ms",
    }
)

#: Group settings for brokers that rebalance slowly with large timeouts (Tansu): a dead worker's commands go
#: to another member within seconds. Override them with the Kafka config (file or dict) for other clusters.
DEFAULT_GROUP_SETTINGS = {
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "1000",
    "max.poll.interval.ms": "10000",
}


class ConfigError(ValueError):
    """A setting that is wrong; the message names it and where it came from."""


def parse_duration_ms(text: str, what: str) -> int:
    """``5ms``, ``500ms``, ``1s``, ``2m`` or a bare number of milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise ConfigError(f"{what}: '{text}' is not a duration (like 5ms, 500ms or 1s)")
    number = float(m.group(1))
    unit = m.group(2) or "ms"
    ms = number * {"ms": 1, "s": 1000, "m": 60000}[unit]
    return int(round(ms))


def parse_properties(text: str, source: str) -> Dict[str, str]:
    """librdkafka settings, one ``key=value`` a line (``#`` and ``!`` start comments); every bad line is reported."""
    settings: Dict[str, str] = {}
    errors = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("!"):
            continue
        if "=" not in line:
            errors.append(f"{source}:{number}: expected key=value, got '{line}'")
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            errors.append(f"{source}:{number}: the key is empty")
            continue
        if key in GUARDED_SETTINGS:
            errors.append(f"{source}:{number}: '{key}' cannot be set here: {_why_guarded(key)}")
            continue
        settings[key] = value
    if errors:
        raise ConfigError("\n".join(errors))
    return settings


def _why_guarded(key: str) -> str:
    if key == "bootstrap.servers":
        return "use BATON_BROKERS or brokers="
    if key == "fetch.wait.max.ms":
        return "use BATON_FETCH_WAIT or fetch_wait_ms="
    return "the worker's delivery guarantees depend on it"


def check_settings(settings: Mapping[str, object], source: str) -> Dict[str, str]:
    out = {}
    for key, value in settings.items():
        if key in GUARDED_SETTINGS:
            raise ConfigError(f"{source}: '{key}' cannot be set here: {_why_guarded(key)}")
        out[key] = str(value) if not isinstance(value, bool) else ("true" if value else "false")
    return out


@dataclass
class Settings:
    """How to reach the cluster; :meth:`from_environment` reads the ``BATON_*`` variables."""

    brokers: str = DEFAULT_BROKERS
    namespace: str = DEFAULT_NAMESPACE
    kafka_config: Dict[str, str] = field(default_factory=dict)
    fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS

    @classmethod
    def from_environment(
        cls,
        brokers: Optional[str] = None,
        namespace: Optional[str] = None,
        kafka_config: Optional[Mapping[str, object]] = None,
        fetch_wait_ms: Optional[int] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> "Settings":
        env = os.environ if environ is None else environ
        settings: Dict[str, str] = {}
        path = env.get("BATON_KAFKA_CONFIG")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError(f"BATON_KAFKA_CONFIG: cannot read '{path}': {e.strerror}") from None
            settings.update(parse_properties(text, path))
        if kafka_config:
            settings.update(check_settings(kafka_config, "kafka_config"))
        if fetch_wait_ms is None:
            wait = env.get("BATON_FETCH_WAIT")
            fetch_wait_ms = parse_duration_ms(wait, "BATON_FETCH_WAIT") if wait else DEFAULT_FETCH_WAIT_MS
        ns = namespace or env.get("BATON_NAMESPACE") or DEFAULT_NAMESPACE
        if not re.fullmatch(r"[A-Za-z0-9._-]+", ns):
            raise ConfigError(f"namespace '{ns}': only letters, digits, '.', '_' and '-' can be in a topic name")
        return cls(
            brokers=brokers or env.get("BATON_BROKERS") or DEFAULT_BROKERS,
            namespace=ns,
            kafka_config=settings,
            fetch_wait_ms=fetch_wait_ms,
        )

    # Topic and group names (docs/wire-protocol.md, "Topics").
    def topic(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def commands_topic(self, pool: str) -> str:
        return f"{self.namespace}.commands.{pool}"

    def workers_group(self, pool: str) -> str:
        return f"{self.namespace}.workers.{pool}"

    def common(self) -> Dict[str, str]:
        conf = {"bootstrap.servers": self.brokers}
        conf.update(self.kafka_config)
        return conf

    def consumer(self, group_id: str, **extra: str) -> Dict[str, str]:
        conf = dict(DEFAULT_GROUP_SETTINGS)
        conf.update(self.common())
        conf.update(
            {
                "group.id": group_id,
                "isolation.level": "read_committed",
                "enable.auto.commit": "false",
                "enable.auto.offset.store": "false",
                "auto.offset.reset": "earliest",
                "allow.auto.create.topics": "false",
                "fetch.wait.max.ms": str(self.fetch_wait_ms),
            }
        )
        conf.update(extra)
        return conf

    def producer(self, **extra: str) -> Dict[str, str]:
        # No auto-created topics: a topic made by a metadata request or a produce would have the broker's
        # default partition count, which for events would split instances from their state.
        conf = {"linger.ms": "1", "partitioner": "murmur2_random", "allow.auto.create.topics": "false"}
        conf.update(self.common())
        conf.update({"enable.idempotence": "true", "acks": "all"})
        conf.update(extra)
        return conf

"""Baton workers and clients in Python, on Baton's wire protocol (version 1) over confluent-kafka.

- :class:`Worker` serves pools: ``@worker.step("payments.charge")``, ``@worker.compensation("payments.refund")``.
- :class:`StepFailure` fails an attempt, retryable or not.
- :class:`Client` / :func:`start` start workflows, partitioned as the engine partitions, and wait for them.
"""

from .client import CONFLICT, CREATED, EXISTS, SENT, Client, StartResult, StartTimeout, start
from .config import ConfigError, Settings
from .protocol import Command, Unreadable, murmur2, partition_for
from .worker import StepContext, StepFailure, Worker

__all__ = [
    "Client",
    "Command",
    "ConfigError",
    "CONFLICT",
    "CREATED",
    "EXISTS",
    "SENT",
    "Settings",
    "StartResult",
    "StartTimeout",
    "StepContext",
    "StepFailure",
    "Unreadable",
    "Worker",
    "murmur2",
    "partition_for",
    "start",
]

__version__ = "0.1.0"

"""Shared facts and tools of the deploy tests: the repository, the engine's own numbers read from its
sources (so that a change there is seen here), and the validators (kubectl kustomize, docker-compose)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
OVERLAYS = ["dev", "production"]
# The Kubernetes versions the manifests are validated for (kubernetes-validate's schemas, strict).
KUBERNETES_VERSIONS = ["1.30.0", "1.34.0"]


def source(path: str) -> str:
    return (REPO / path).read_text()


def transaction_timeout_seconds() -> int:
    """The coordinators' (and triggers') Kafka transaction timeout: KafkaProducerConfiguration's default."""
    text = source("Sources/BatonKafka/KafkaConfiguration.swift")
    m = re.search(r"var transactionTimeout: Duration = \.seconds\((\d+)\)", text)
    assert m, "KafkaConfiguration.swift no longer declares transactionTimeout as .seconds(N): update this test"
    return int(m.group(1))


def topic_spec(name: str) -> dict:
    return yaml.safe_load((REPO / "topics" / f"{name}.yaml").read_text())


def command_topic_partitions() -> int:
    """The partitions the engine gives a command topic it creates (CommandTopics.defaultPartitions, the
    coordinators' default)."""
    coordinator = source("Sources/BatonCoordinator/Coordinator.swift")
    assert re.search(r"var commandTopicPartitions = CommandTopics\.defaultPartitions", coordinator), \
        "the coordinators' commandTopicPartitions default changed: update this test"
    m = re.search(r"static let defaultPartitions = (\d+)", source("Sources/BatonRuntime/CommandTopics.swift"))
    assert m, "no CommandTopics.defaultPartitions in Sources/BatonRuntime/CommandTopics.swift: update this test"
    return int(m.group(1))


def example_pools() -> list[str]:
    """The pools of `baton example-workers`: the keys of ExampleWorkers.handlers."""
    text = "\n".join(p.read_text() for p in (REPO / "Sources" / "BatonExamples").glob("*.swift"))
    m = re.search(r"handlers[^=]*=\s*\[(.*?)\n\s*\]", text, re.S)
    assert m, "no ExampleWorkers.handlers dictionary in Sources/BatonExamples: update this test"
    return sorted(set(re.findall(r'^\s*"([a-z0-9_.]+)":\s*\{', m.group(1), re.M)))


def image_uid() -> int:
    """The uid of the image's user, as deploy/image/prepare-runtime creates it."""
    m = re.search(r"useradd [^\n]*--uid (\d+)", (DEPLOY / "image" / "prepare-runtime").read_text())
    assert m
    return int(m.group(1))


def kubectl() -> str | None:
    """kubectl with kustomize: $BATON_KUBECTL, else on PATH, else the one scripts/setup unpacks."""
    for candidate in (os.environ.get("BATON_KUBECTL"), shutil.which("kubectl"),
                      str(Path(os.environ.get("BATON_CACHE", Path.home() / ".cache" / "baton")) / "kubectl" / "kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


_rendered: dict[str, list[dict]] = {}


def kustomize(overlay: str) -> list[dict]:
    """`kubectl kustomize` of an overlay, as a list of resources (built once per run)."""
    if overlay not in _rendered:
        tool = kubectl()
        if tool is None:
            pytest.fail("kubectl (with kustomize) is missing: scripts/setup installs it")
        result = run([tool, "kustomize", str(KUBERNETES / "overlays" / overlay)])
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        _rendered[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[overlay]


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def docker_compose() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing: scripts/setup installs Debian's docker-compose")
    return tool

"""docs/deploy.md says what was run and what was only validated, with the versions the tests use."""

from __future__ import annotations

import re

import yaml

import crd_schemas
from conftest import COMPOSE, KUBERNETES_VERSIONS, REPO

DOC = (REPO / "docs" / "deploy.md").read_text()


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert m, f"docs/deploy.md has no section '{title}'"
    return m.group(1)


def test_the_doc_covers_what_issue_12_asks():
    for title in ("The image", "Docker Compose", "Kubernetes", "Sizing", "Topic settings for production",
                  "TLS and SASL", "Upgrades", "Backup and broker loss", "What was validated here and what was not"):
        section(title)
    assert "--kafka-config" in section("TLS and SASL")


def test_the_topic_settings_name_every_topic_as_topics_declares_it():
    specs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "topics").glob("*.yaml"))]
    settings = section("Topic settings for production")
    compacted_row = next(line for line in settings.splitlines() if "`compact`" in line)
    for spec in specs:
        compacted = spec.get("configs", {}).get("cleanup.policy") == "compact"
        assert (f"`{spec['name']}`" in compacted_row.split("|")[1]) == compacted, \
            f"topic {spec['name']}: the compacted row of docs/deploy.md disagrees with topics/{spec['name']}.yaml"
    sizing = section("Sizing")
    twelve = sizing.split("have 12")[0]
    for spec in specs:
        assert (f"`{spec['name']}`" in twelve) == (spec["partitions"] == 12), f"docs/deploy.md's partitions of {spec['name']}"


def test_what_was_validated_names_the_validators_and_their_versions():
    text = section("What was validated here and what was not")
    for phrase in ("Not built", "Reproduced", "Validated only", "Not run", "docker-compose config", "kubectl kustomize",
                   "kubernetes-validate", "check-runtime", "debootstrap"):
        assert phrase in text, f"'{phrase}' is missing from the section"
    for version in KUBERNETES_VERSIONS:
        assert "Kubernetes " + version.rsplit(".", 1)[0] in text or version.rsplit(".", 1)[0] in text
    pinned = (REPO / "tests" / "deploy" / "requirements.txt").read_text()
    kv = re.search(r"kubernetes-validate==(\S+)", pinned).group(1)
    assert f"kubernetes-validate {kv}" in text
    for project, spec in crd_schemas.SOURCES.items():
        assert spec["tag"].lstrip("v") in text, f"the {project} CRD version is not named"
    images = re.findall(r"\$\{[A-Z_]+:-([^}]+)\}", COMPOSE.read_text())
    for image in {i for i in images if "/" in i and ":" in i}:
        assert image in text, f"the compose image {image} is not named"


def test_the_keys_section_says_who_gets_which_key_how_to_rotate_and_the_acls():
    text = section("Keys")
    deploy = "\n".join(p.read_text() for p in (REPO / "deploy").rglob("*.yaml")) + COMPOSE.read_text()
    # The names the deploy files use, and the variables the processes read (Sources/BatonRuntime/KeySettings.swift).
    settings = (REPO / "Sources" / "BatonRuntime" / "KeySettings.swift").read_text()
    for name in ("baton-coordinator-keys", "baton-server-signing-key", "coordinator-keys", "server-key"):
        assert f"`{name}`" in text and name in deploy, f"{name} is not named in the section or not used in deploy/"
    for variable in ("BATON_TRUSTED_KEYS", "BATON_RESULT_SECRET", "BATON_SIGNING_KEY", "BATON_KEYS_DIR"):
        assert variable in text and f'"{variable}"' in settings, variable
    for file in ("signing.key", "trusted-keys.yaml", "result.secret"):
        assert f"`{file}`" in text and f'"{file}"' in settings, file
    for phrase in ("baton keys init", "baton keys add-operator", "stop-the-world", "bad-token", "5 minutes", "kafka-acls.sh"):
        assert phrase in text, f"'{phrase}' is missing from the Keys section"
    # An ACL example for each role that holds a principal of its own.
    for principal in ("User:worker-", "User:baton-coordinator", "User:baton-serve"):
        assert principal in text

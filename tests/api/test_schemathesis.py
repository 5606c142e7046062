"""The API contract: schemathesis reads docs/openapi.yaml as `baton serve` serves it (`GET /openapi.yaml`),
generates requests from it (its examples, boundary and invalid values, random ones, and stateful sequences
that follow the document's links) and checks every answer: no 5xx, only documented status codes and content
types, and bodies that match the documented schemas. A failure names the request that reproduces it.

    BATON_API_EXAMPLES   test cases per operation and phase (default 50)
    BATON_API_SEED       a seed, to repeat a run (schemathesis prints the seed of each run)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
# Server-Sent Events streams answer 200 and stay open: a generated request would only time out. Their refusals
# (400, 401, 404) share the code of every other read; tests/browser follows a stream.
STREAMS = ["streamInstance", "streamChanges"]
TIME_LIMIT = 900  # seconds for the whole run; under 2 minutes on 2 cores with the default examples


def test_served_document_is_the_one_in_docs(baton) -> None:
    """`GET /openapi.yaml` serves docs/openapi.yaml byte for byte (the copy in Sources/BatonServer/Resources)."""
    response = baton.api("GET", "/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/yaml")
    assert response.content == (REPO / "docs" / "openapi.yaml").read_bytes(), "Sources/BatonServer/Resources/openapi.yaml differs from docs/openapi.yaml"
    document = yaml.safe_load(response.content)
    assert document["openapi"].startswith("3.1")


def test_every_answer_matches_the_document(baton, tmp_path: Path) -> None:
    examples = os.environ.get("BATON_API_EXAMPLES", "50")
    command = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run",
        f"{baton.base_url}/openapi.yaml",
        "--url",
        baton.base_url,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        examples,
        "--header",
        f"Authorization: Bearer {baton.admin_token}",
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--no-color",
        "--continue-on-failure",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    for operation in STREAMS:
        command += ["--exclude-operation-id", operation]
    if seed := os.environ.get("BATON_API_SEED"):
        command += ["--seed", seed]
    # In a temporary folder: schemathesis keeps a cache (.schemathesis/) where it runs.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=TIME_LIMIT, stdin=subprocess.DEVNULL)
    report = result.stdout + result.stderr
    print(report)
    assert result.returncode == 0, f"schemathesis found answers that do not match docs/openapi.yaml (exit {result.returncode}):\n{report[-20000:]}"

#!/usr/bin/env python3
"""The OpenAPI schemas of the custom resources deploy/kubernetes uses, and where they come from.

No package of Debian or PyPI ships these CRDs' schemas (checked: Debian bookworm has no KEDA or
prometheus-operator package; on PyPI, cloudcoil-models-keda and cloudcoil-models-prometheus-operator carry
Python models generated from them, which accept unknown fields, so they cannot catch a misspelt one). So the
schemas are read from the projects' own CRD files at a release tag, out of a git checkout (a clone, or a
mirror fetched for reading), and written as JSON into a schema folder; the files themselves are not part of
Baton's repository.

    python3 tests/deploy/crd_schemas.py --keda KEDA_GIT_DIR --prometheus-operator PROMETHEUS_OPERATOR_GIT_DIR [--out DIR]

writes one JSON file per kind (`<group>_<kind>_<version>.json`: the CRD's openAPIV3Schema for that served
version) and `sources.json` (repository, tag, commit, path and SHA-256 of each CRD file) into DIR (default:
the first of the folders below, ~/.cache/baton/crd-schemas).

tests/deploy looks for the schemas, in this order, in:
  $BATON_CRD_SCHEMAS
  <repository>/../shared/crd-schemas   (the shared folder beside the work tree, as CI has it)
  ~/.cache/baton/crd-schemas
and skips the CRD tests, saying so, when none has them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# What is read, from which release.
SOURCES = {
    "keda": {
        "repository": "https://github.com/kedacore/keda",
        "tag": "v2.20.2",
        "files": [
            "config/crd/bases/keda.sh_scaledobjects.yaml",
            "config/crd/bases/keda.sh_triggerauthentications.yaml",
        ],
    },
    "prometheus-operator": {
        "repository": "https://github.com/prometheus-operator/prometheus-operator",
        "tag": "v0.93.0",
        "files": [
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        ],
    },
}

# The kinds deploy/kubernetes uses: (apiVersion, kind).
KINDS = [
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
]


def schema_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("BATON_CRD_SCHEMAS"):
        dirs.append(Path(os.environ["BATON_CRD_SCHEMAS"]))
    dirs.append(REPO.parent / "shared" / "crd-schemas")
    cache = Path(os.environ.get("BATON_CACHE", Path.home() / ".cache" / "baton"))
    dirs.append(cache / "crd-schemas")
    return dirs


def file_name(api_version: str, kind: str) -> str:
    group, version = api_version.split("/")
    return f"{group}_{kind.lower()}_{version}.json"


def find(api_version: str, kind: str) -> tuple[dict | None, str]:
    """The schema of a kind and the file it came from, or None and where it was looked for."""
    name = file_name(api_version, kind)
    for d in schema_dirs():
        path = d / name
        if path.is_file():
            return json.loads(path.read_text()), str(path)
    return None, "no " + name + " in " + ", ".join(str(d) for d in schema_dirs())


def strict(schema: dict) -> dict:
    """The schema as the API server applies it with strict field validation (kubectl's default since 1.27):
    an object whose properties are listed takes no other field, unless it says it keeps unknown fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True, text=True).stdout


def git_dir_of(path: Path) -> Path:
    return path / ".git" if (path / ".git").exists() else path


def extract(project: str, checkout: Path, out: Path, sources: list[dict]) -> None:
    spec = SOURCES[project]
    git_dir = git_dir_of(checkout)
    commit = git(git_dir, "rev-list", "-n", "1", spec["tag"]).strip()
    for path in spec["files"]:
        text = git(git_dir, "show", f"{spec['tag']}:{path}")
        crd = yaml.safe_load(text)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            api_version = f"{group}/{version['name']}"
            schema = version["schema"]["openAPIV3Schema"]
            (out / file_name(api_version, kind)).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(f"crd_schemas: {api_version} {kind} from {project} {spec['tag']} {path}")
        sources.append(
            {
                "project": project,
                "repository": spec["repository"],
                "tag": spec["tag"],
                "commit": commit,
                "path": path,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keda", type=Path, required=True, help="a git checkout or mirror of kedacore/keda")
    parser.add_argument("--prometheus-operator", type=Path, required=True, help="a git checkout or mirror of prometheus-operator/prometheus-operator")
    parser.add_argument("--out", type=Path, default=schema_dirs()[-1])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sources: list[dict] = []
    extract("keda", args.keda, args.out, sources)
    extract("prometheus-operator", args.prometheus_operator, args.out, sources)
    (args.out / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    missing = [k for a, k in KINDS if not (args.out / file_name(a, k)).is_file()]
    if missing:
        print("crd_schemas: missing " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"crd_schemas: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The container image (Dockerfile) and its reproduction without a container engine
(deploy/image/check-runtime, run on its own by scripts/test with the release binary): that the two install
the same things, that the build follows scripts/setup's librdkafka recipe, and that the image's helper
scripts behave. The Dockerfile itself is never built here (no container engine)."""

from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import DEPLOY, REPO, image_uid

DOCKERFILE = (REPO / "Dockerfile").read_text()
IMAGE = DEPLOY / "image"
CHECK_RUNTIME = (IMAGE / "check-runtime").read_text()


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), as (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip()
            result[current] = [(word, rest)]
        elif current:
            result[current].append((word, rest))
    return result


def test_build_stage_uses_the_swift_toolchain_and_builds_librdkafka_as_setup_does():
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    assert args["SWIFT_IMAGE"] == "swift:6.3.1-bookworm"
    assert args["RUNTIME_IMAGE"] == "debian:bookworm-slim"
    build = stages()["build"]
    assert build[0] == ("FROM", "${SWIFT_IMAGE} AS build")
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "build-librdkafka /usr/local" in runs
    assert "swift build -c release --product baton --static-swift-stdlib" in runs
    assert "cp -a /usr/local/lib/librdkafka.so* /out/usr/local/lib/" in runs
    # The same librdkafka as scripts/setup builds.
    setup = (REPO / "scripts" / "setup").read_text()
    recipe = (IMAGE / "build-librdkafka").read_text()
    for var in ("LIBRDKAFKA_SRC_VERSION", "LIBRDKAFKA_DEB_VERSION"):
        version = re.search(rf"^{var}=(\S+)", setup, re.M).group(1)
        assert version in recipe, f"deploy/image/build-librdkafka does not build scripts/setup's {var} {version}"
    suite = re.search(r"^LIBRDKAFKA_SUITE=(\S+)", setup, re.M).group(1)
    assert "--disable-gssapi" in recipe and f"suite={suite}" in recipe
    # With the same patches: every one in deploy/image is applied by both, and the image copies each next to the recipe.
    patches = sorted(p.name for p in IMAGE.glob("librdkafka-*.patch"))
    assert patches, "deploy/image has Baton's librdkafka patches"
    assert 'librdkafka-*.patch' in recipe and 'librdkafka-*.patch' in setup
    copy = " ".join(rest for word, rest in build if word == "COPY")
    for name in patches:
        assert f"deploy/image/{name}" in copy, f"the Dockerfile does not copy {name} next to build-librdkafka"


def test_runtime_stage_installs_only_the_package_list_and_runs_as_the_non_root_user():
    runtime = stages()["runtime"]
    assert runtime[0] == ("FROM", "${RUNTIME_IMAGE} AS runtime")
    runs = [rest for word, rest in runtime if word == "RUN"]
    assert runs == ["/usr/local/share/baton-image/prepare-runtime /usr/local/share/baton-image", "ldconfig"], \
        "the runtime stage must install through prepare-runtime only (check-runtime reproduces exactly that)"
    assert ("USER", f"{image_uid()}:{image_uid()}") in runtime
    assert ("ENTRYPOINT", '["/usr/local/bin/baton"]') in runtime
    assert ("WORKDIR", "/usr/share/baton") in runtime
    packages = [l for l in (IMAGE / "runtime-packages").read_text().splitlines() if l and not l.startswith("#")]
    assert packages and not any(p.endswith("-dev") for p in packages)
    assert not any("swift" in p for p in packages), "the binary is linked with --static-swift-stdlib"


def test_check_runtime_installs_what_the_runtime_stage_copies():
    copies = [shlex.split(rest) for word, rest in stages()["runtime"] if word == "COPY"]
    # COPY SRC... DEST from the context, and --from=build's /out/.
    from_build = [c for c in copies if c[0].startswith("--from=")]
    assert from_build == [["--from=build", "/out/", "/"]]
    context = {}
    for c in copies:
        if not c[0].startswith("--"):
            for src in c[:-1]:
                context[src] = c[-1]
    expected = {
        "deploy/image/runtime-packages": "/usr/local/share/baton-image/",
        "deploy/image/prepare-runtime": "/usr/local/share/baton-image/",
        "deploy/image/probe": "/usr/local/bin/baton-probe",
        "deploy/image/stop": "/usr/local/bin/baton-stop",
        "examples": "/usr/share/baton/examples",
    }
    assert context == expected
    for line in (
        'cp "$here/runtime-packages" "$here/prepare-runtime" "$partial/usr/local/share/baton-image/"',
        'chroot "$partial" /usr/local/share/baton-image/prepare-runtime /usr/local/share/baton-image',
        'install -D -m 0755 "$binary" "$root/usr/local/bin/baton"',
        'cp -a "$libdir"/librdkafka.so* "$root/usr/local/lib/"',
        'chroot "$root" ldconfig',
        'install -m 0755 "$here/probe" "$root/usr/local/bin/baton-probe"',
        'install -m 0755 "$here/stop" "$root/usr/local/bin/baton-stop"',
        'cp -r "$repo/examples" "$root/usr/share/baton/"',
        "debootstrap --variant=minbase bookworm",
        "chroot --userspec=10001:10001",
    ):
        assert line in CHECK_RUNTIME, f"check-runtime no longer does: {line}"


def test_dockerignore_keeps_build_folders_out_and_the_sources_in():
    ignored = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for pattern in (".git", ".build", ".build-*"):
        assert pattern in ignored
    for needed in ("Package.swift", "Sources", "Tests", "examples", "deploy", "deploy/image"):
        assert not any(needed == p or needed.startswith(p.rstrip("/") + "/") for p in ignored), f"{needed} is needed by the build"


class _Handler(http.server.BaseHTTPRequestHandler):
    statuses = {"/readyz": 503, "/healthz": 200}

    def do_GET(self):  # noqa: N802
        status = self.statuses.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IMAGE / "probe"), *args], capture_output=True, text=True, timeout=20)


def test_probe_passes_on_200_and_fails_on_anything_else(server):
    assert probe(str(server), "/healthz").returncode == 0
    not_ready = probe(str(server), "/readyz")
    assert not_ready.returncode == 1 and "503" in not_ready.stderr
    assert probe(str(server)).returncode == 1  # /readyz by default
    assert probe(str(server), "/nothing").returncode == 1


def test_probe_fails_when_nothing_listens(server):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = probe(str(port))
    assert result.returncode == 1 and "nothing listens" in result.stderr


def test_stop_sends_sigterm_to_pid_1_and_waits_for_it():
    # In a PID namespace of its own (as in a container), a shell that traps SIGTERM is PID 1; baton-stop,
    # run in that namespace, must end it and return only once it is gone.
    script = (
        "trap 'echo got-term; exit 0' TERM; "
        f"{IMAGE / 'stop'} & stopper=$!; "
        "while :; do sleep 0.1; done"
    )
    try:
        result = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                                capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, PermissionError) as e:
        pytest.skip(f"no PID namespace here ({e})")
    if "Operation not permitted" in result.stderr:
        pytest.skip(f"no PID namespace here: {result.stderr.strip()}")
    assert result.returncode == 0 and "got-term" in result.stdout, result.stderr

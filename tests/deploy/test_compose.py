"""deploy/compose: checked by Debian's docker-compose (`docker-compose config`, which validates the file
against the Compose schema and resolves anchors, merges and variables), then what the stack must do,
asserted on the resolved configuration. No container is started (no engine here)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import COMPOSE, DEPLOY, REPO, docker_compose, image_uid, run, transaction_timeout_seconds

COMPOSE_DIR = COMPOSE.parent
BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
# Long-running services without a healthcheck, and why.
NO_HEALTHCHECK = {"otel-collector": "its image has no shell or HTTP client to run a check with"}
# The baton roles the stack must run as long-running services, by the subcommand each runs.
ROLES = {"coordinator": 2, "example-workers": 1, "triggers": 1, "serve": 1}


@pytest.fixture(scope="module")
def config() -> dict:
    result = run([docker_compose(), "--file", str(COMPOSE), "config"], cwd=COMPOSE_DIR)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def seconds(duration: str | int | None) -> float:
    """A compose duration (1m30s, 90s, 500ms) in seconds."""
    if duration is None:
        return 10.0  # compose's default stop grace period
    if isinstance(duration, (int, float)):
        return float(duration)
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}[unit]
    return total


def long_running(config: dict) -> dict[str, dict]:
    return {n: s for n, s in config["services"].items() if s.get("restart") != "no" and not s.get("profiles")}


def one_shots(config: dict) -> dict[str, dict]:
    return {n: s for n, s in config["services"].items() if s.get("restart") == "no" and not s.get("profiles")}


def baton_services(config: dict) -> dict[str, dict]:
    return {n: s for n, s in config["services"].items() if s["image"].startswith("baton")}


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_docker_compose_rejects_a_broken_file():
    # The validator is real: a misspelt key and a dependency on a service that does not exist are refused.
    with tempfile.TemporaryDirectory() as d:
        broken = Path(d) / "docker-compose.yml"
        text = COMPOSE.read_text().replace("    stop_grace_period: 90s\n", "    stop_grace_periods: 90s\n", 1)
        broken.write_text(text)
        result = run([docker_compose(), "--file", str(broken), "config", "--quiet"], cwd=d)
        assert result.returncode != 0 and "stop_grace_periods" in result.stderr
        text = COMPOSE.read_text().replace("condition: service_completed_successfully", "condition: service_done", 1)
        broken.write_text(text)
        result = run([docker_compose(), "--file", str(broken), "config", "--quiet"], cwd=d)
        assert result.returncode != 0


def test_kafka_is_three_kraft_brokers_with_replication_3_and_min_insync_2(config):
    voters = None
    ids = set()
    for name in BROKERS:
        env = config["services"][name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert config["services"][name]["image"].startswith("apache/kafka:")
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert voters in (None, env["KAFKA_CONTROLLER_QUORUM_VOTERS"]), "the brokers disagree on the quorum"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        ids.add(env["KAFKA_NODE_ID"])
        # Each broker keeps its log in a volume of its own.
        assert any(v.get("target") == env["KAFKA_LOG_DIRS"] if isinstance(v, dict) else v.endswith(":" + env["KAFKA_LOG_DIRS"] + ":rw")
                   for v in config["services"][name]["volumes"])
    assert sorted(ids) == ["1", "2", "3"]
    assert sorted(voters.split(",")) == [f"{i}@kafka-{i}:9093" for i in (1, 2, 3)]


def test_every_long_running_service_has_a_healthcheck(config):
    for name, service in long_running(config).items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name}'s healthcheck is disabled"


def test_the_baton_roles_run_with_their_metrics_checked_and_scraped(config):
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert all(j.startswith("baton-") for j in jobs), "the alert rules expect job names starting with baton-"
    seen = {role: 0 for role in ROLES}
    for name, service in baton_services(config).items():
        if name not in long_running(config):
            continue
        command = service["command"]
        role = command[0]
        assert role in ROLES, f"{name} runs an unknown role {role}"
        seen[role] += 1
        port = option(command, "--metrics-port")
        assert port, f"{name} serves no metrics"
        # The healthcheck asks the role's own readiness, on its metrics port.
        assert service["healthcheck"]["test"] == ["CMD", "baton-probe", port, "/readyz"], name
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
        env = service["environment"]
        assert env["BATON_BROKERS"].split(",") == [f"{b}:9092" for b in BROKERS]
    assert seen == ROLES


def test_coordinators_have_time_to_finish_their_transaction_and_send_traces(config):
    timeout = transaction_timeout_seconds()
    otel = yaml.safe_load((COMPOSE_DIR / "otel-collector.yaml").read_text())
    endpoint = otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert endpoint.endswith(":4318") and "traces" in otel["service"]["pipelines"]
    coordinators = {n: s for n, s in config["services"].items() if s.get("command", [None])[0] == "coordinator"}
    assert len(coordinators) == 2
    for name, service in coordinators.items():
        assert seconds(service.get("stop_grace_period")) > timeout, f"{name}'s stop_grace_period is not above {timeout} s"
        assert option(service["command"], "--otlp-endpoint") == "http://otel-collector:4318"
    triggers = config["services"]["triggers"]
    assert seconds(triggers.get("stop_grace_period")) > timeout


def test_coordinators_are_static_members_named_after_their_service(config):
    # Static membership (group.instance.id): unique per live process (two with one id fence each other) and the
    # same across a container's restarts, which a compose service name is; never on a service that may be scaled.
    members = {n: option(s.get("command", []), "--instance-id") for n, s in baton_services(config).items()}
    coordinators = {n for n, s in config["services"].items() if s.get("command", [None])[0] == "coordinator"}
    assert {n: members[n] for n in coordinators} == {n: n for n in coordinators}
    ids = [i for i in members.values() if i]
    assert len(ids) == len(set(ids)), f"two services share an instance id: {sorted(ids)}"
    for name, service in baton_services(config).items():
        assert "BATON_INSTANCE_ID" not in (service.get("environment") or {}), f"{name}: an instance id in the shared environment"


def test_one_shots_apply_the_topics_then_register_definitions_before_the_engine_starts(config):
    shots = one_shots(config)
    topics = shots["topics"]
    assert topics["command"][:2] == ["topics", "apply"]
    assert option(topics["command"], "--replication-factor") == "3"
    assert {b: {"condition": "service_healthy"} for b in BROKERS} == topics["depends_on"]
    definitions = shots["definitions"]
    assert definitions["command"][:2] == ["definitions", "register"]
    for path in definitions["command"][2:]:
        assert (REPO / path).is_file(), f"definitions registers {path}, which is not in the repository (nor the image)"
    assert definitions["depends_on"] == {"topics": {"condition": "service_completed_successfully"}}
    for name, service in baton_services(config).items():
        if name in long_running(config):
            assert service["depends_on"]["definitions"] == {"condition": "service_completed_successfully"}, name


def test_depends_on_conditions_are_ones_the_services_can_meet(config):
    services = config["services"]
    for name, service in services.items():
        for other, dep in (service.get("depends_on") or {}).items():
            condition = dep["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits for {other} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[other].get("restart") == "no", f"{name} waits for {other} to complete; it restarts"
            else:
                assert condition == "service_started"


def test_serve_reads_the_auth_file_the_auth_one_shot_writes(config):
    serve = config["services"]["serve"]
    auth = config["services"]["auth"]
    path = option(serve["command"], "--auth")
    assert path and f"--file {path}" in auth["command"][0]
    # The file is handed to the image's user, whom serve runs as.
    assert f"chown -R {image_uid()}:{image_uid()}" in auth["command"][0]
    assert serve["depends_on"]["auth"] == {"condition": "service_completed_successfully"}
    volume = lambda s: {(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2]) for v in s["volumes"]}  # noqa: E731
    assert volume(serve) & volume(auth), "serve and auth share no volume"


def test_prometheus_loads_the_alert_rules_and_grafana_the_dashboard(config):
    prometheus = config["services"]["prometheus"]
    mounts = {Path(v["source"]).resolve() if isinstance(v, dict) else Path(v.split(":")[0]).resolve():
              v["target"] if isinstance(v, dict) else v.split(":")[1] for v in prometheus["volumes"]}
    rules_target = mounts[(DEPLOY / "prometheus" / "baton-alerts.yml").resolve()]
    config_target = mounts[(COMPOSE_DIR / "prometheus.yml").resolve()]
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    assert [str(Path(config_target).parent / f) for f in scrape["rule_files"]] == [rules_target]
    grafana = config["services"]["grafana"]
    gmounts = {Path(v["source"]).resolve() if isinstance(v, dict) else Path(v.split(":")[0]).resolve():
               v["target"] if isinstance(v, dict) else v.split(":")[1] for v in grafana["volumes"]}
    dashboard = gmounts[(DEPLOY / "grafana" / "baton-dashboard.json").resolve()]
    providers = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "baton.yml").read_text())
    assert str(Path(dashboard).parent) == providers["providers"][0]["options"]["path"]
    assert gmounts[(COMPOSE_DIR / "grafana" / "provisioning").resolve()] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_published_ports_are_bound_to_loopback(config):
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


# --- Keys (issue 19): each process sees the key files it needs, and no other -----------------------------

KEY_FILES = {"signing.key", "trusted-keys.yaml", "result.secret"}
# What each role must be given, by the subcommand it runs; every other service gets none (workers, triggers,
# the CLI, the other one-shots). Only the `keys` one-shot, which makes them, sees all three.
NEEDS = {"coordinator": {"trusted-keys.yaml", "result.secret"}, "serve": {"signing.key"}}
KEY_VARIABLES = {"BATON_TRUSTED_KEYS": "trusted-keys.yaml", "BATON_RESULT_SECRET": "result.secret",
                 "BATON_SIGNING_KEY": "signing.key"}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each of a service's volumes."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def key_volumes(config: dict) -> dict[str, set[str]]:
    """The key files each volume holds, read from the `keys` one-shot's script: `baton keys init DIR` puts all
    three in the volume mounted at DIR, and each `cp FILE... DIR/` the named files in the one at DIR."""
    shot = config["services"]["keys"]
    at = {target: source for source, target, _ in mounts(shot)}
    script = shot["command"][0]
    held: dict[str, set[str]] = {}
    (init,) = re.findall(r"baton keys init (\S+)", script)
    held[at[init]] = set(KEY_FILES)
    for args in re.findall(r"\bcp ([^&;|]+)", script):
        *files, dest = args.split()
        assert all(Path(f).name in KEY_FILES for f in files), f"the keys one-shot copies something else: {args}"
        held.setdefault(at[dest.rstrip("/")], set()).update(Path(f).name for f in files)
    return held


def key_exposure(config: dict, variables: bool = True) -> dict[str, set[str]]:
    """The key files each service can read: those of the key volumes it mounts, and (with `variables`) any
    file a key variable of its environment names (BATON_KEYS_DIR means all three)."""
    held = key_volumes(config)
    seen: dict[str, set[str]] = {}
    for name, service in config["services"].items():
        files = set()
        for source, _, _ in mounts(service):
            files |= held.get(source, set())
        env = service.get("environment") or {}
        if variables:
            files |= {f for var, f in KEY_VARIABLES.items() if env.get(var)}
            if env.get("BATON_KEYS_DIR"):
                files |= KEY_FILES
        seen[name] = files
    return seen


def key_violations(config: dict) -> list[str]:
    """What breaks the rule: a process that can read a key it does not need, or misses one it needs."""
    problems = []
    mounted = key_exposure(config, variables=False)
    for name, files in key_exposure(config).items():
        if name == "keys":
            continue
        command = config["services"][name].get("command") or [None]
        role = command[0] if config["services"][name]["image"].startswith("baton") else None
        needed = NEEDS.get(role, set())
        if files - needed:
            problems.append(f"{name} ({role or 'not baton'}) can read {sorted(files - needed)}")
        if needed - mounted[name]:
            problems.append(f"{name} ({role}) is not given {sorted(needed - mounted[name])}")
    return problems


def test_the_keys_one_shot_makes_the_keys_once_before_the_coordinators_and_serve_start(config):
    shot = config["services"]["keys"]
    assert shot["restart"] == "no"
    script = shot["command"][0]
    # `baton keys init` keeps what exists: the keys survive `docker-compose down` and `up` (a named volume).
    (init,) = re.findall(r"baton keys init (\S+)", script)
    volume = next(source for source, target, _ in mounts(shot) if target == init)
    assert volume in config["volumes"], f"the keys are made into {volume}, which is not a named volume"
    # Handed to the image's user, whom the coordinators and serve run as.
    assert f"chown -R {image_uid()}:{image_uid()}" in script
    for name, service in config["services"].items():
        command = service.get("command") or [None]
        if service["image"].startswith("baton") and command[0] in NEEDS:
            assert service["depends_on"]["keys"] == {"condition": "service_completed_successfully"}, name


def test_coordinators_get_the_trusted_keys_and_result_secret_and_serve_the_signing_key_read_only(config):
    held = key_volumes(config)
    given = {role: 0 for role in NEEDS}
    for name, service in config["services"].items():
        command = service.get("command") or [None]
        if not service["image"].startswith("baton") or command[0] not in NEEDS:
            continue
        given[command[0]] += 1
        for var, file in KEY_VARIABLES.items():
            if file not in NEEDS[command[0]]:
                continue
            path = service["environment"].get(var)
            assert path and Path(path).name == file, f"{name}: {var} does not name its {file}"
            # The file the variable names is in a key volume holding it, mounted read-only.
            mount = [(s, ro) for s, t, ro in mounts(service) if str(Path(path).parent) == t]
            assert mount, f"{name}: nothing is mounted at {Path(path).parent} ({var})"
            ((source, read_only),) = mount
            assert file in held.get(source, set()), f"{name}: {source} does not hold {file}"
            assert read_only, f"{name} mounts {source} writable"
    assert given == {"coordinator": ROLES["coordinator"], "serve": ROLES["serve"]}


def test_no_process_can_read_a_key_it_does_not_need(config):
    assert key_violations(config) == []
    # Only the one-shot that makes them sees every key.
    assert [n for n, files in key_exposure(config).items() if files == KEY_FILES] == ["keys"]


def test_the_key_check_catches_a_signing_key_given_to_a_worker_or_a_coordinator(config):
    # The check above is real: mounting serve's key into the workers, or copying signing.key into the
    # coordinators' volume, or pointing the triggers at a key folder, is each reported.
    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["services"]["example-workers"]["volumes"] = ["server-key:/etc/baton/signing:ro"]
    assert any(p.startswith("example-workers") and "signing.key" in p for p in key_violations(broken))
    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["services"]["keys"]["command"][0] = broken["services"]["keys"]["command"][0].replace(
        "/keys/result.secret /coordinator-keys/", "/keys/result.secret /keys/signing.key /coordinator-keys/")
    assert any(p.startswith("coordinator-1") and "signing.key" in p for p in key_violations(broken))
    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["services"]["triggers"]["environment"]["BATON_KEYS_DIR"] = "/keys"
    assert any(p.startswith("triggers") for p in key_violations(broken))
    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["services"]["serve"]["volumes"] = [v for v in broken["services"]["serve"]["volumes"] if "server-key" not in str(v)]
    assert any(p.startswith("serve") and "not given ['signing.key']" in p for p in key_violations(broken))

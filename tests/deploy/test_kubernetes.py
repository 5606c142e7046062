"""deploy/kubernetes: each overlay built by `kubectl kustomize`, every built-in resource validated by
kubernetes-validate (strict: unknown fields refused) for the Kubernetes versions in KUBERNETES_VERSIONS, the
custom resources (KEDA, prometheus-operator) against their CRDs' OpenAPI schemas (tests/deploy/crd_schemas.py
says where those come from), then what the manifests must do for Baton. No cluster is involved."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import crd_schemas
from conftest import (
    DEPLOY,
    KUBERNETES,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    by_kind,
    command_topic_partitions,
    example_pools,
    image_uid,
    kubectl,
    kustomize,
    run,
    topic_spec,
    transaction_timeout_seconds,
)

CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The trigger metadata KEDA's Kafka scaler reads (kedacore/keda v2.20.2, pkg/scalers/kafka_scaler.go,
# kafkaMetadata's `keda:"name=..."` tags, order=triggerMetadata), plus the FromEnv forms of those it resolves
# from the scale target's environment (resolvedEnv).
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic", "topicFromEnv",
    "partitionLimitation", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}
LONG_RUNNING = ["baton-coordinator", "baton-triggers", "baton-serve"]


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def config_map(resources: list[dict]) -> dict:
    maps = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("baton-config")]
    assert len(maps) == 1
    return maps[0]["data"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_kubectl_is_a_real_kustomize_that_refuses_a_broken_overlay():
    tool = kubectl()
    assert tool, "kubectl is missing: scripts/setup installs it"
    version = run([tool, "version", "--client"])
    assert version.returncode == 0 and "Kustomize Version: v5" in version.stdout, version.stdout
    with tempfile.TemporaryDirectory() as d:
        Path(d, "kustomization.yaml").write_text(f"resources:\n  - {KUBERNETES / 'base'}\npatches:\n  - path: missing.yaml\n")
        assert run([tool, "kustomize", d]).returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_resources_are_valid_for_kubernetes(overlay, version):
    checked = 0
    for resource in kustomize(overlay):
        if resource["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"overlays/{overlay}: {resource['kind']} {resource['metadata']['name']} is not valid for Kubernetes {version}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 20


def test_kubernetes_validate_refuses_an_unknown_field():
    deployment = by_kind(kustomize("production"), "Deployment")["baton-coordinator"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def crd_validator(resource: dict) -> jsonschema.protocols.Validator:
    schema, where = crd_schemas.find(resource["apiVersion"], resource["kind"])
    if schema is None:
        pytest.skip(f"the CRD schema of {resource['kind']} is not here ({where}); tests/deploy/crd_schemas.py makes it")
    return jsonschema.Draft7Validator(crd_schemas.strict(schema))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_are_valid_against_their_crd_schemas(overlay):
    custom = [r for r in kustomize(overlay) if r["apiVersion"].startswith(CUSTOM_GROUPS)]
    if overlay == "dev":
        assert custom == [], "the dev overlay is for clusters without KEDA or prometheus-operator"
        return
    kinds = {r["kind"] for r in custom}
    assert kinds == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
    for resource in custom:
        errors = sorted(crd_validator(resource).iter_errors(resource), key=lambda e: list(e.path))
        assert not errors, f"{resource['kind']} {resource['metadata']['name']}: " + "; ".join(
            f"{e.message} at {list(e.path)}" for e in errors[:5])


def test_the_crd_schemas_refuse_a_misspelt_field():
    scaled = next(r for r in kustomize("production") if r["kind"] == "ScaledObject")
    validator = crd_validator(scaled)
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["maxReplicas"] = broken["spec"].pop("maxReplicaCount")
    assert list(validator.iter_errors(broken))
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["maxReplicaCount"] = "twelve"
    assert list(validator.iter_errors(broken))
    monitor = next(r for r in kustomize("production") if r["kind"] == "ServiceMonitor")
    broken = yaml.safe_load(yaml.safe_dump(monitor))
    broken["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(crd_validator(monitor).iter_errors(broken))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_coordinators_stop_gracefully_and_are_ready_only_once_rebuilt(overlay):
    resources = kustomize(overlay)
    timeout = transaction_timeout_seconds()
    for name in ("baton-coordinator", "baton-triggers"):
        deployment = by_kind(resources, "Deployment")[name]
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > timeout, f"{name}: the grace period must exceed the transaction timeout ({timeout} s)"
        (container,) = spec["containers"]
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["/usr/local/bin/baton-stop"]
        assert container["args"][0] == name.removeprefix("baton-")
    coordinator = by_kind(resources, "Deployment")["baton-coordinator"]
    (container,) = containers(coordinator)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # A rolling update replaces the next coordinator only once the new one is ready (partitions rebuilt).
    assert coordinator["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    replicas = coordinator["spec"]["replicas"]
    assert 1 <= replicas <= topic_spec("events")["partitions"], "more coordinators than events partitions would sit idle"
    budget = by_kind(resources, "PodDisruptionBudget")["baton-coordinator"]
    assert selects(budget["spec"]["selector"], coordinator["spec"]["template"]["metadata"]["labels"])
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_deployment_uses_static_membership(overlay):
    # A Deployment's pod comes back under a new name, and a static member does not leave its group when it stops:
    # a pod name as group.instance.id would leave a replaced pod's partitions idle for a session timeout at each
    # rollout (docs/deploy.md: static membership needs a StatefulSet).
    for name, deployment in by_kind(kustomize(overlay), "Deployment").items():
        for container in containers(deployment):
            assert "--instance-id" not in container.get("args", []), name
            assert "BATON_INSTANCE_ID" not in {e["name"] for e in container.get("env", [])}, name


def test_production_runs_three_coordinators():
    assert by_kind(kustomize("production"), "Deployment")["baton-coordinator"]["spec"]["replicas"] == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_is_probed_on_its_metrics_port_and_runs_as_the_image_user(overlay):
    resources = kustomize(overlay)
    settings = config_map(resources)
    kafka_dir = str(Path(settings["BATON_KAFKA_CONFIG"]).parent)
    for name, deployment in by_kind(resources, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == image_uid(), f"{name} runs as another user than the image's"
        assert pod["serviceAccountName"] == "baton"
        assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "baton"
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["metrics"]) == option(container["args"], "--metrics-port"), name
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, f"{name} {probe}"
        assert any(e.get("configMapRef", {}).get("name", "").startswith("baton-config") for e in container["envFrom"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["kafka-config"] == kafka_dir
        assert volumes["kafka-config"]["secret"]["secretName"].startswith("baton-kafka")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_deployment_per_example_pool(overlay):
    deployments = by_kind(kustomize(overlay), "Deployment")
    pools = {}
    for name, d in deployments.items():
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
            args = containers(d)[0]["args"]
            assert args[0] == "example-workers"
            pools[option(args, "--pool")] = name
            assert "replicas" not in d["spec"] or overlay == "dev", "KEDA owns the workers' replicas"
            assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10, "in-flight commands get 10 s"
    assert sorted(pools) == example_pools()


def test_keda_scales_each_pool_on_its_group_lag_up_to_the_command_partitions():
    resources = kustomize("production")
    settings = config_map(resources)
    namespace = settings["BATON_NAMESPACE"]
    partitions = command_topic_partitions()
    assert partitions == topic_spec("events")["partitions"], "command topics have as many partitions as events"
    deployments = by_kind(resources, "Deployment")
    auths = by_kind(resources, "TriggerAuthentication")
    scaled = by_kind(resources, "ScaledObject")
    assert len(scaled) == len(example_pools())
    for name, so in scaled.items():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        pool = option(containers(target)[0]["args"], "--pool")
        assert so["spec"]["maxReplicaCount"] == partitions
        assert 1 <= so["spec"]["minReplicaCount"] <= partitions
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert set(meta) <= KEDA_KAFKA_METADATA, f"{name}: KEDA's Kafka scaler reads no {set(meta) - KEDA_KAFKA_METADATA}"
        assert meta["consumerGroup"] == f"{namespace}.workers.{pool}"
        assert meta["topic"] == f"{namespace}.commands.{pool}"
        assert int(meta["lagThreshold"]) > 0
        assert meta["offsetResetPolicy"] == "earliest"
        # The brokers come from the target container's environment, i.e. the same ConfigMap.
        assert meta["bootstrapServersFromEnv"] in settings
        assert trigger["authenticationRef"]["name"] in auths


def test_the_worker_pool_files_are_what_the_template_writes():
    with tempfile.TemporaryDirectory() as d:
        result = run([str(KUBERNETES / "worker-pool"), "--out", d, "--examples"])
        assert result.returncode == 0, result.stderr
        for sub in ("base/workers", "components/keda"):
            written = sorted(p.name for p in Path(d, sub).glob("*.yaml"))
            committed = sorted(p.name for p in (KUBERNETES / sub).glob("worker-*.yaml"))
            assert written == committed
            for name in written:
                assert Path(d, sub, name).read_text() == (KUBERNETES / sub / name).read_text(), \
                    f"{sub}/{name} differs from deploy/kubernetes/worker-pool's template: run `deploy/kubernetes/worker-pool --examples`"
            listed = yaml.safe_load((KUBERNETES / sub / "kustomization.yaml").read_text())["resources"]
            assert sorted(listed) == committed
    # The template's namespace and partitions are the engine's.
    script = (KUBERNETES / "worker-pool").read_text()
    assert f"COMMAND_PARTITIONS={command_topic_partitions()}\n" in script
    assert f"NAMESPACE={config_map(kustomize('production'))['BATON_NAMESPACE']}\n" in script
    assert run([str(KUBERNETES / "worker-pool"), "--out", "/nonexistent-x", "Bad/Pool"]).returncode == 2


def test_the_prometheus_rule_carries_the_alert_rules_unchanged():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "baton-alerts.yml").read_text())
    (rule,) = by_kind(kustomize("production"), "PrometheusRule").values()
    assert rule["spec"]["groups"] == rules["groups"], "run deploy/kubernetes/sync-alerts after changing deploy/prometheus/baton-alerts.yml"
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_the_service_monitor_scrapes_every_role_with_a_baton_job_name():
    resources = kustomize("production")
    (monitor,) = by_kind(resources, "ServiceMonitor").values()
    services = [s for s in by_kind(resources, "Service").values() if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    deployments = by_kind(resources, "Deployment").values()
    port = monitor["spec"]["endpoints"][0]["port"]
    covered = set()
    for service in services:
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        assert job.startswith("baton-"), "the alert rules expect job names starting with baton-"
        assert any(p["name"] == port and p["targetPort"] == "metrics" for p in service["spec"]["ports"])
        covered |= {d["metadata"]["name"] for d in deployments
                    if selects({"matchLabels": service["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])}
    assert covered == {d["metadata"]["name"] for d in deployments}, "some Deployment is not scraped"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_is_reached_through_its_service_and_ingress_and_reads_its_secret(overlay):
    resources = kustomize(overlay)
    serve = by_kind(resources, "Deployment")["baton-serve"]
    (container,) = containers(serve)
    args = container["args"]
    assert option(args, "--host") == "0.0.0.0"
    http = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert str(http) == option(args, "--port")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in serve["spec"]["template"]["spec"]["volumes"]}
    for flag in ("--auth", "--session-key-file"):
        path = Path(option(args, flag))
        assert str(path.parent) == mounts["serve"], f"{flag} is not in the mounted Secret"
        assert volumes["serve"]["secret"]["secretName"].startswith("baton-serve")
    service = by_kind(resources, "Service")["baton-serve"]
    assert selects({"matchLabels": service["spec"]["selector"]}, serve["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    (ingress,) = by_kind(resources, "Ingress").values()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "baton-serve", "port": {"name": "http"}}
    if overlay == "dev":
        secrets = [r for r in resources if r["kind"] == "Secret" and r["metadata"]["name"].startswith("baton-serve")]
        assert len(secrets) == 1 and {"auth.yaml", "session-key"} <= set(secrets[0]["data"])


@pytest.mark.parametrize("overlay,replication", [("dev", "1"), ("production", "3")])
def test_the_topics_job_applies_the_topics(overlay, replication):
    (job,) = [j for j in by_kind(kustomize(overlay), "Job").values() if j["metadata"]["name"] == "baton-topics"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["topics", "apply"]
    assert option(container["args"], "--replication-factor") == replication
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_network_policy_covers_every_pod_and_lets_through_what_baton_needs():
    resources = kustomize("production")
    policies = by_kind(resources, "NetworkPolicy")
    everything = policies["baton"]
    for d in by_kind(resources, "Deployment").values():
        assert selects(everything["spec"]["podSelector"], d["spec"]["template"]["metadata"]["labels"])
    for j in by_kind(resources, "Job").values():
        assert selects(everything["spec"]["podSelector"], j["spec"]["template"]["metadata"]["labels"])
    ingress_ports = {p["port"] for rule in everything["spec"]["ingress"] for p in rule["ports"]}
    assert 9464 in ingress_ports
    egress = [p for rule in everything["spec"]["egress"] for p in rule.get("ports", [])]
    assert {"protocol": "UDP", "port": 53} in egress
    for broker in config_map(resources)["BATON_BROKERS"].split(","):
        port = int(broker.rsplit(":", 1)[1])
        assert any(p["protocol"] == "TCP" and p["port"] <= port <= p.get("endPort", p["port"]) for p in egress), \
            f"egress to the broker port {port} is not allowed"
    serve_ports = {p["port"] for rule in policies["baton-serve"]["spec"]["ingress"] for p in rule["ports"]}
    serve = by_kind(resources, "Deployment")["baton-serve"]
    assert {p["containerPort"] for p in containers(serve)[0]["ports"] if p["name"] == "http"} <= serve_ports


def test_production_points_every_client_at_the_tls_sasl_settings():
    resources = kustomize("production")
    settings = config_map(resources)
    assert settings["BATON_KAFKA_CONFIG"].startswith("/etc/baton/kafka/")
    example = (KUBERNETES / "overlays" / "production" / "kafka.properties.example").read_text()
    props = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    assert props["security.protocol"] == "SASL_SSL"
    assert props["ssl.ca.location"].startswith(str(Path(settings["BATON_KAFKA_CONFIG"]).parent) + "/")
    # None of the settings Baton refuses in the file (docs/operations.md).
    refused = {"bootstrap.servers", "group.id", "transactional.id", "isolation.level", "enable.auto.commit",
               "enable.auto.offset.store", "enable.idempotence", "acks", "enable.partition.eof", "log.queue", "fetch.wait.max.ms"}
    assert not refused & set(props)
    # No Secret with credentials is committed for production: the operator makes them.
    assert not [r for r in resources if r["kind"] == "Secret"]


# --- Keys (issue 19): each pod sees the key files it needs, and no other ---------------------------------

KEY_FILES = {"signing.key", "trusted-keys.yaml", "result.secret"}
# The Secrets the operator makes from `baton keys init` (docs/deploy.md, "Keys"), and the files each holds.
KEY_SECRETS = {"baton-coordinator-keys": {"trusted-keys.yaml", "result.secret"}, "baton-server-signing-key": {"signing.key"}}
KEY_VARIABLES = {"BATON_TRUSTED_KEYS": "trusted-keys.yaml", "BATON_RESULT_SECRET": "result.secret",
                 "BATON_SIGNING_KEY": "signing.key"}
# What each workload must be given; every other one (workers, triggers, Jobs) gets none.
NEEDS = {"baton-coordinator": {"trusted-keys.yaml", "result.secret"}, "baton-serve": {"signing.key"}}


def pod_specs(resources: list[dict]) -> dict[str, dict]:
    """Every pod template, by its workload's kind and name."""
    out = {}
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out[f"{r['kind']}/{r['metadata']['name']}"] = r["spec"]["template"]["spec"]
        elif r["kind"] == "CronJob":
            out[f"{r['kind']}/{r['metadata']['name']}"] = r["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return out


def secret_files(source: dict) -> set[str]:
    """The key files a secret volume source (or a projected volume's secret source) puts in the pod: the key
    files its items name (whatever the Secret), else all a key Secret holds. (No other Secret may hold a key
    file: checked on the rendered Secrets.)"""
    if source.get("items"):
        return {i["key"] for i in source["items"]} & KEY_FILES
    return set(KEY_SECRETS.get(source.get("secretName") or source.get("name"), set()))


def volume_files(volume: dict) -> set[str]:
    if "secret" in volume:
        return secret_files(volume["secret"])
    if "projected" in volume:
        return set().union(*(secret_files(s["secret"]) for s in volume["projected"]["sources"] if "secret" in s))
    return set()


def pod_keys(pod: dict, config_maps: dict[str, dict]) -> tuple[set[str], set[str], list[str]]:
    """(the key files the pod's containers mount, the ones they can read by any means, and the problems with
    the variables that name them: a variable naming a file that is not mounted at that path)."""
    volumes = {v["name"]: volume_files(v) for v in pod.get("volumes", [])}
    mounted: set[str] = set()
    readable: set[str] = set()
    problems = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        at = {m["mountPath"]: volumes.get(m["name"], set()) for m in container.get("volumeMounts", [])}
        for files in at.values():
            mounted |= files
        env = {e["name"]: e for e in container.get("env", [])}
        for ref in container.get("envFrom", []):
            if "configMapRef" in ref:
                for var, value in config_maps.get(ref["configMapRef"]["name"], {}).items():
                    env.setdefault(var, {"name": var, "value": value})
            if "secretRef" in ref:
                readable |= KEY_SECRETS.get(ref["secretRef"]["name"], set())
        for var, e in env.items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                readable |= KEY_SECRETS.get(ref["name"], set()) & {ref["key"]}
            if var == "BATON_KEYS_DIR":
                readable |= KEY_FILES
            if var in KEY_VARIABLES:
                readable.add(KEY_VARIABLES[var])
                path = Path(e.get("value", ""))
                if path.name != KEY_VARIABLES[var] or KEY_VARIABLES[var] not in at.get(str(path.parent), set()):
                    problems.append(f"{container['name']}: {var}={e.get('value')} is not a mounted {KEY_VARIABLES[var]}")
    return mounted, mounted | readable, problems


def key_violations(resources: list[dict]) -> list[str]:
    config_maps = {r["metadata"]["name"]: r.get("data", {}) for r in resources if r["kind"] == "ConfigMap"}
    problems = []
    for workload, pod in pod_specs(resources).items():
        needed = NEEDS.get(workload.split("/", 1)[1] if workload.startswith("Deployment/") else "", set())
        mounted, readable, wrong = pod_keys(pod, config_maps)
        problems += [f"{workload}: {p}" for p in wrong]
        if readable - needed:
            problems.append(f"{workload} can read {sorted(readable - needed)}")
        if needed - mounted:
            problems.append(f"{workload} is not given {sorted(needed - mounted)}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_coordinators_get_the_trusted_keys_and_result_secret_and_serve_the_signing_key(overlay):
    resources = kustomize(overlay)
    assert key_violations(resources) == []
    deployments = by_kind(resources, "Deployment")
    for name, files in NEEDS.items():
        (container,) = containers(deployments[name])
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert {KEY_VARIABLES[v] for v in env if v in KEY_VARIABLES} == files, f"{name}'s key variables"
        # Mounted read-only, from the Secret named in the docs, with only these files.
        volumes = {v["name"]: v for v in deployments[name]["spec"]["template"]["spec"]["volumes"]}
        for mount in container["volumeMounts"]:
            source = volumes[mount["name"]].get("secret", {})
            if source.get("secretName") in KEY_SECRETS:
                assert mount.get("readOnly") is True, f"{name} mounts {source['secretName']} writable"
                assert {i["key"] for i in source["items"]} == files == KEY_SECRETS[source["secretName"]]
    # No key material is committed: the operator makes the two Secrets (the overlays only name them), and no
    # generated Secret holds a key file.
    for secret in (r for r in resources if r["kind"] == "Secret"):
        assert secret["metadata"]["name"] not in KEY_SECRETS
        assert not set(secret.get("data", {})) & KEY_FILES, f"{secret['metadata']['name']} holds a key"
    # Not in the ConfigMap every role reads.
    assert not set(config_map(resources)) & (set(KEY_VARIABLES) | {"BATON_KEYS_DIR"})


def test_the_key_check_catches_a_signing_key_given_to_a_worker_or_a_coordinator():
    resources = kustomize("production")

    def broken(change) -> list[str]:
        copy = [yaml.safe_load(yaml.safe_dump(r)) for r in resources]
        change({f"{r['kind']}/{r['metadata']['name']}": r for r in copy})
        return key_violations(copy)

    def mount_signing_key(workload: dict) -> None:
        pod = workload["spec"]["template"]["spec"]
        pod["volumes"].append({"name": "signing-key", "secret": {"secretName": "baton-server-signing-key"}})
        pod["containers"][0]["volumeMounts"].append({"name": "signing-key", "mountPath": "/etc/baton/signing", "readOnly": True})

    worker = next(n for n, d in by_kind(resources, "Deployment").items() if n.startswith("worker-"))
    assert any(p.startswith(f"Deployment/{worker} can read ['signing.key']") for p in broken(lambda r: mount_signing_key(r[f"Deployment/{worker}"])))
    assert any(p.startswith("Deployment/baton-coordinator can read ['signing.key']")
               for p in broken(lambda r: mount_signing_key(r["Deployment/baton-coordinator"])))

    # A signing.key added to the coordinators' Secret's items, the triggers pointed at a key folder, the key
    # variables put in the shared ConfigMap, and serve without its key: each reported.
    def add_item(r):
        vol = next(v for v in r["Deployment/baton-coordinator"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")
        vol["secret"]["items"].append({"key": "signing.key", "path": "signing.key"})
    assert any("baton-coordinator can read ['signing.key']" in p for p in broken(add_item))

    def keys_dir(r):
        r["Deployment/baton-triggers"]["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append(
            {"name": "BATON_KEYS_DIR", "value": "/etc/baton/keys"})
    assert any(p.startswith("Deployment/baton-triggers can read") for p in broken(keys_dir))

    def shared(r):
        name = next(n for n in r if n.startswith("ConfigMap/baton-config"))
        r[name]["data"]["BATON_SIGNING_KEY"] = "/etc/baton/signing/signing.key"
    assert any(p.startswith(f"Deployment/{worker}") for p in broken(shared))

    def no_key(r):
        pod = r["Deployment/baton-serve"]["spec"]["template"]["spec"]
        pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "signing-key"]
    problems = broken(no_key)
    assert "Deployment/baton-serve is not given ['signing.key']" in problems
    assert any("BATON_SIGNING_KEY" in p and "not a mounted" in p for p in problems)

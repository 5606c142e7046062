"""The operations files: Prometheus alert rules (checked and unit-tested with promtool), the example scrape
configuration, the Grafana dashboard, and their agreement with docs/observability.md.

Run by scripts/test (after the browser test), or alone: `python3 -m pytest -q tests/ops`. Needs promtool
(Debian's `prometheus` package, which scripts/setup installs); no broker, no Baton build.

The YAML files are read with regular expressions, not a YAML library (none is sure to be installed for the
python3 that runs the tests): they are ours and keep one layout, and promtool checks that they are valid YAML
and valid rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "baton-alerts.yml"
RULE_TESTS = PROMETHEUS / "baton-alerts.test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "baton-dashboard.json"
DOC = REPO / "docs" / "observability.md"

# The metrics Baton exports (issue 9's plan, issue 10's event wait, and issue 11's triggers). docs/observability.md must document exactly these; the rules and
# the dashboard may use only these (and Prometheus's own `up`).
PLANNED_METRICS = {
    "baton_ready",
    "baton_build_info",
    "baton_instances_started_total",
    "baton_instances_finished_total",
    "baton_instances_suspended_total",
    "baton_instances",
    "baton_instance_duration_seconds",
    "baton_step_attempts_total",
    "baton_step_duration_seconds",
    "baton_compensations_total",
    "baton_tasks_total",
    "baton_alerts_total",
    "baton_dead_letters_total",
    "baton_deadletters_republished_total",
    "baton_coordinator_events_total",
    "baton_coordinator_batch_events",
    "baton_coordinator_transaction_seconds",
    "baton_coordinator_event_wait_seconds",
    "baton_coordinator_transactions_total",
    "baton_coordinator_rebalances_total",
    "baton_coordinator_partitions_owned",
    "baton_coordinator_rebuild_seconds",
    "baton_coordinator_rebuild_records_total",
    "baton_coordinator_timers",
    "baton_coordinator_clock_offset_seconds",
    "baton_coordinator_clock_timers_held",
    "baton_consumer_lag",
    "baton_mailbox_records_total",
    "baton_worker_commands_total",
    "baton_worker_commands_in_flight",
    "baton_worker_commands_waiting",
    "baton_worker_handler_seconds",
    "baton_worker_queue_wait_seconds",
    "baton_worker_results_sent_total",
    "baton_worker_delivery_failures_total",
    "baton_worker_handed_back_total",
    "baton_http_requests_total",
    "baton_http_request_duration_seconds",
    "baton_read_model_instances",
    "baton_triggers_records_total",
    "baton_triggers_starts_total",
    "baton_triggers_transactions_total",
    "baton_triggers_batch_seconds",
}

# What Grafana puts in place of the dashboard's variables, to check its queries as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$workflow": ".*", "$pool": ".*"}


def promtool(*args: str | Path, cwd: Path = REPO) -> str:
    """Runs promtool; fails the test with its output unless it exits 0."""
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run scripts/setup (Debian package prometheus)"
    result = subprocess.run([binary, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} exited {result.returncode}:\n{output}"
    return output


def metric_names(expr: str) -> set[str]:
    """The Baton metric names an expression uses, histogram series folded into their histogram."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"baton_[a-z_]+", expr)}


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/observability.md's tables."""
    return set(re.findall(r"^\|\s*`(baton_[a-z_]+)`\s*\|", DOC.read_text(), re.MULTILINE))


def heading_anchors() -> set[str]:
    """The anchors GitHub gives docs/observability.md's headings (not the comments in its code blocks)."""
    anchors = set()
    text = re.sub(r"^```.*?^```", "", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def alert_blocks() -> dict[str, str]:
    """Each alert's text in the rules file, by name."""
    parts = re.split(r"^\s+- alert: (\w+)\s*$", RULES.read_text(), flags=re.MULTILINE)
    blocks = dict(zip(parts[1::2], parts[2::2]))
    assert len(blocks) == len(parts[1::2]), "an alert name appears twice"
    return blocks


def alert_expr(block: str) -> str:
    match = re.search(r"^\s+expr: \|\n((?:\s{10}.*\n)+)", block, re.MULTILINE)
    assert match, "every expr is a block scalar (expr: |)"
    return match.group(1)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(board: dict) -> list[dict]:
    """Every panel but rows, including those inside collapsed rows."""
    panels = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


# --- promtool -------------------------------------------------------------------------------------------


def test_the_alert_rules_are_valid():
    output = promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(alert_blocks())} rules found" in output


def test_the_alert_rules_pass_their_unit_tests():
    output = promtool("test", "rules", RULE_TESTS)
    assert "SUCCESS" in output


def test_the_example_configuration_is_valid_with_its_rules(tmp_path: Path):
    # In a directory of its own, as an operator would copy them: the rule file is named relative to the config.
    shutil.copy(CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "baton-alerts.yml")
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output
    config = CONFIG.read_text()
    for job, port in [("baton-coordinator", 9464), ("baton-workers", 9465), ("baton-serve", 9466)]:
        assert re.search(rf"job_name: {job}\n\s+static_configs:\n\s+- targets: \[\"[\w.]+:{port}\"\]", config), job


# --- the rules ------------------------------------------------------------------------------------------


def test_every_alert_has_a_duration_a_severity_and_annotations_with_a_runbook_on_the_page():
    anchors = heading_anchors()
    blocks = alert_blocks()
    assert len(blocks) >= 13
    for name, block in blocks.items():
        assert re.search(r"^\s+for: \d+[smh]\s*$", block, re.MULTILINE), f"{name}: no for:"
        assert re.search(r"^\s+severity: (warning|critical)\s*$", block, re.MULTILINE), f"{name}: no severity"
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}: \".+\"\s*$", block, re.MULTILINE), f"{name}: no {annotation}"
        runbook = re.search(r"runbook: \"docs/observability\.md#([\w-]+)\"", block)
        assert runbook, f"{name}: the runbook is not a section of docs/observability.md"
        assert runbook.group(1) in anchors, f"{name}: docs/observability.md has no heading for #{runbook.group(1)}"
        assert runbook.group(1) == name.lower(), f"{name}: its runbook should be its own section"


def test_the_rules_cover_what_operators_need_to_know():
    exprs = {name: alert_expr(block) for name, block in alert_blocks().items()}
    every = "\n".join(exprs.values())
    for needed in [
        r'baton_consumer_lag\{group=~"\.\+\\\\\.workers',  # a pool's lag
        r"deriv\(baton_consumer_lag",  # ... rising
        r'baton_consumer_lag\{group=~"\.\+\\\\\.coordinator"\}',
        r"rate\(baton_dead_letters_total\[5m\]\)\) > 0",
        r'sum by \(workflow\) \(baton_instances\{status="suspended"\}\) > 0',
        r'increase\(baton_compensations_total\{outcome="failed"\}\[10m\]\)\) > 0',
        r"increase\(baton_coordinator_rebalances_total",
        r'baton_ready\{component="coordinator"\} == 0',
        r'up\{job=~"baton-\.\*"\} == 0',
        r'rate\(baton_coordinator_transactions_total\{result="aborted"\}',
        r'increase\(baton_alerts_total\{severity="critical"\}\[5m\]\)\) > 0',
        r"baton_step_attempts_total",
        r"baton_worker_handed_back_total",
    ]:
        assert re.search(needed, every), f"no rule matches {needed}"


def test_the_rules_use_only_documented_metrics():
    documented = documented_metrics()
    for name, block in alert_blocks().items():
        expr = alert_expr(block)
        used = metric_names(expr)
        assert used or re.search(r"\bup\{", expr), f"{name} uses no Baton metric (nor up)"
        assert used <= documented, f"{name} uses metrics docs/observability.md does not list: {used - documented}"


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet():
    text = RULE_TESTS.read_text()
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in re.split(r"^\s+- eval_time: ", text, flags=re.MULTILINE)[1:]:
        name = re.search(r"^\s+alertname: (\w+)", case, re.MULTILINE)
        assert name, f"a case without alertname: {case[:80]!r}"
        if re.search(r"^\s+exp_alerts: \[\]", case, re.MULTILINE):
            quiet.add(name.group(1))
        else:
            assert re.search(r"^\s+exp_alerts:\n\s+- exp_labels:", case, re.MULTILINE), f"{name.group(1)}: exp_alerts?"
            firing.add(name.group(1))
    alerts = set(alert_blocks())
    assert alerts - firing == set(), f"alerts with no case that fires: {alerts - firing}"
    assert alerts - quiet == set(), f"alerts with no case that stays quiet: {alerts - quiet}"
    assert (firing | quiet) - alerts == set(), f"tests of alerts that do not exist: {(firing | quiet) - alerts}"


# --- the page -------------------------------------------------------------------------------------------


def test_the_page_documents_exactly_the_planned_metrics():
    documented = documented_metrics()
    assert documented - PLANNED_METRICS == set(), f"documented but not planned: {documented - PLANNED_METRICS}"
    assert PLANNED_METRICS - documented == set(), f"planned but not documented: {PLANNED_METRICS - documented}"


def test_the_pages_promql_examples_parse(tmp_path: Path):
    # Each example: the lines after a comment, up to the next comment or blank line.
    examples = []
    for block in re.findall(r"^```promql\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL):
        for chunk in re.split(r"^(?:#.*|\s*)\n", block, flags=re.MULTILINE):
            if chunk.strip():
                examples.append(" ".join(line.strip() for line in chunk.splitlines()))
    assert len(examples) >= 8
    rules = ["groups:", "  - name: examples", "    rules:"]
    for i, expr in enumerate(examples):
        rules += [f"      - record: example_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "examples.yml"
    path.write_text("\n".join(rules) + "\n")
    promtool("check", "rules", path)
    assert metric_names(" ".join(examples)) <= documented_metrics()


def test_the_page_covers_endpoints_tracing_and_live_monitoring():
    doc = DOC.read_text()
    for needed in ("/metrics", "/healthz", "/readyz", "--metrics-port", "## Tracing", "--otlp-endpoint", "traceparent",
                   "baton watch", "baton watch ID", "baton tail"):
        assert needed in doc, f"docs/observability.md does not mention {needed}"


# --- the dashboard --------------------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard():
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus" for i in board["__inputs"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, metric in [("workflow", "baton_instances_started_total"), ("pool", "baton_worker_commands_in_flight")]:
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"] == f"label_values({metric}, {name})"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in query_panels(board) if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_queries_the_chosen_prometheus():
    panels = query_panels(dashboard())
    assert len(panels) >= 30
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: a query without expr"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_shows_what_operators_need():
    exprs = "\n".join(t["expr"] for p in query_panels(dashboard()) for t in p["targets"])
    for needed in [
        "rate(baton_instances_started_total",
        "rate(baton_instances_finished_total",
        "histogram_quantile(0.5, sum by (workflow, le) (rate(baton_instance_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (workflow, le) (rate(baton_instance_duration_seconds_bucket",
        "sum by (outcome) (rate(baton_step_attempts_total",
        "histogram_quantile(0.99, sum by (workflow, step, le) (rate(baton_step_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (pool, le) (rate(baton_worker_queue_wait_seconds_bucket",
        "rate(baton_worker_handler_seconds_bucket",
        "baton_worker_commands_in_flight",
        "baton_worker_commands_waiting",
        "max by (group, partition) (baton_consumer_lag",
        "rate(baton_dead_letters_total",
        "rate(baton_compensations_total",
        'baton_instances{workflow=~"$workflow",status="suspended"}',
        "sum by (phase, le) (rate(baton_coordinator_transaction_seconds_bucket",
        "baton_coordinator_batch_events_bucket",
        "baton_coordinator_partitions_owned",
        "baton_coordinator_rebalances_total",
        "baton_coordinator_rebuild_seconds",
        "sum by (severity) (rate(baton_alerts_total",
        "rate(baton_http_requests_total",
        "baton_http_request_duration_seconds_bucket",
    ]:
        assert needed in exprs, f"no panel queries {needed}"


def test_the_dashboard_uses_only_documented_metrics():
    documented = documented_metrics()
    for panel in query_panels(dashboard()):
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']}: {target['expr']} uses no Baton metric"
            assert used <= documented, f"{panel['title']}: not in docs/observability.md: {used - documented}"


def test_every_dashboard_query_parses_as_promql(tmp_path: Path):
    # promtool has no command to parse an expression alone; as recording rules, it parses each one.
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for panel in query_panels(dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr.replace("$1", ""), f"{panel['title']}: an unknown variable in {expr}"
            rules.append(f"      - record: dashboard_panel_{panel['id']}_{target['refId']}")
            rules.append(f"        expr: {json.dumps(expr)}")
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("\n".join(rules) + "\n")
    promtool("check", "rules", path)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))

"""The chart's alert rules and Grafana dashboards: promtool checks and unit-tests the
rules, every dashboard query parses as PromQL, both name only metrics the servers
export, and the chart ships them as they are."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from modelyard.quality import metrics as quality_metrics
from modelyard.serving import metrics as serving_metrics
from tests.support.server import REPO

CHART = REPO / "charts" / "modelyard"
RULES = sorted((CHART / "files" / "rules").glob("*.yaml"))
DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
RULE_TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yaml"))
# What MLServer's gRPC interceptor exports.
MLSERVER_METRICS = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "grpc_server_handling_seconds_sum",
    "grpc_server_handling_seconds_count",
}
# Grafana's variables, as a query would run with every model selected.
VARIABLES = {"$model": ".+", "$window": "week", "$__rate_interval": "5m"}
METRIC_NAME = re.compile(r"\b((?:modelyard|model_infer|grpc_server)_[a-z_]+)\b")


def promtool(*args: str, cwd: Path | None = None) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: `make test` installs it (Debian package prometheus)"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def exported() -> set[str]:
    """The sample names of modelyard's metrics, and MLServer's."""
    names = set(MLSERVER_METRICS)
    for value in [*vars(serving_metrics).values(), *vars(quality_metrics).values()]:
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                kind = family.type
                base = family.name
                if kind == "counter":
                    names.add(f"{base}_total")
                elif kind == "histogram":
                    names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
                elif kind == "summary":
                    names |= {f"{base}_sum", f"{base}_count"}
                else:
                    names.add(base)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query of every dashboard, its variables filled in."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                found.append((f"{path.name}: {panel['title']} {target['refId']}", expr))
    return found


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert RULES and RULE_TESTS
    out = promtool("check", "rules", *map(str, RULES))
    assert "SUCCESS" in out
    out = promtool("test", "rules", *[p.name for p in RULE_TESTS], cwd=RULE_TESTS[0].parent)
    assert out.count("SUCCESS") == len(RULE_TESTS), out
    # Every alert is exercised by a unit test.
    alerts = {r["alert"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"]
              for r in g["rules"] if "alert" in r}  # fmt: skip
    tested = {t["alertname"] for p in RULE_TESTS for case in yaml.safe_load(p.read_text())["tests"]
              for t in case["alert_rule_test"]}  # fmt: skip
    assert alerts == tested, f"alerts without a unit test: {sorted(alerts - tested)}"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    # promtool parses the expressions of recording rules: one per query.
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in
                          enumerate(queries)],
            }
        ]
    }  # fmt: skip
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path))


def test_dashboards_are_grafana_dashboards_on_a_chosen_data_source() -> None:
    uids = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        uids.append(board["uid"])
        assert board["title"].startswith("modelyard: ")
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        boxes = []
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                assert panel["targets"], panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            boxes.append((grid["x"], grid["y"], grid["w"], grid["h"]))
        for i, (x, y, w, h) in enumerate(boxes):  # no panel covers another
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, path.name
    assert len(set(uids)) == len(uids) == 4


def test_rules_and_dashboards_name_only_exported_metrics() -> None:
    known = exported()
    rules = [r["expr"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"]
             for r in g["rules"]]  # fmt: skip
    texts = rules + [e for _, e in dashboard_queries()]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used - known == set(), f"not exported by modelyard or MLServer: {used - known}"
    needed = {
        "modelyard_model_metric", "modelyard_batch_last_success_timestamp_seconds",
        "modelyard_payload_log_dropped_total", "modelyard_rest_infer_seconds_bucket",
        "model_infer_request_failure_total", "grpc_server_handling_seconds_bucket",
    }  # fmt: skip
    assert needed <= used, needed - used


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name="modelyard", namespace="platform")
    return [d for name, text in sorted(files.items()) if name.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]  # fmt: skip


@pytest.mark.timeout(120)
def test_the_chart_ships_the_rules_and_dashboards_as_they_are() -> None:
    enabled = {"monitoring": {"rules": {"enabled": True}, "dashboards": {"enabled": True}}}
    docs = rendered(enabled)
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert [r["spec"] for r in rules] == [yaml.safe_load(p.read_text()) for p in RULES]
    boards = {
        key: json.loads(value)
        for d in docs
        if d["kind"] == "ConfigMap"
        for key, value in d.get("data", {}).items()
        if key.endswith(".json")
    }
    assert boards == {p.name: json.loads(p.read_text()) for p in DASHBOARDS}

"""The shipped Prometheus, alert, Grafana and KEDA files: valid for their tools, and naming real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.protocol.names import BUNDLED_MODEL_ID, bulk_queue_for_model, queue_for_model
from worker.metrics import definitions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GATEWAY_METRICS = {"embedq_http_requests_total", "embedq_http_request_seconds"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def known_metric_names() -> set[str]:
    names = {value for key, value in vars(definitions).items() if key.isupper() and isinstance(value, str)}
    names |= GATEWAY_METRICS
    return names | {name + suffix for name in names for suffix in HISTOGRAM_SUFFIXES}


def metric_names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bembedq_[a-z_]+", expression))


def promtool() -> str:
    binary = shutil.which("promtool", path="/usr/bin:/usr/local/bin")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return binary


@pytest.mark.parametrize(
    "arguments",
    [
        ["check", "config", "prometheus/prometheus.yml"],
        ["check", "rules", "prometheus/alerts.yml"],
        ["test", "rules", "prometheus/alerts_test.yml"],
    ],
)
def test_promtool_accepts_the_shipped_files(arguments: list[str]) -> None:
    done = subprocess.run([promtool(), *arguments], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/embedq.json").read_text())
    return loaded


def test_dashboard_and_alerts_name_only_metrics_that_exist() -> None:
    expressions = [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = set().union(*(metric_names_in(expression) for expression in expressions))
    assert used and used <= known_metric_names(), used - known_metric_names()


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # promtool has no check for a bare expression: each query becomes a recording rule of its own.
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    command = [promtool(), "check", "rules", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_dashboard_shows_what_operators_ask_for() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    for wanted in (
        "Queue depth per queue",
        "Docs/s by kind",
        "Encode latency p50 / p99",
        "Queue wait p50 / p99",
        "Errors by type",
        "Milvus rows/s by collection",
    ):
        assert wanted in titles
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard()["panels"]}
    assert uids == {provisioned["datasources"][0]["uid"]}


def test_prometheus_scrapes_the_port_compose_gives_the_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_sd = jobs["embedq-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"]
    assert str(worker_sd["port"]) == compose["services"]["worker"]["environment"]["EMBEDQ_METRICS_PORT"]
    mounts = compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_dir(), source


def test_keda_scales_on_the_bundled_models_lists() -> None:
    scaled = next(yaml.safe_load_all((DEPLOY / "keda/scaledobject.yaml").read_text()))
    assert scaled["kind"] == "ScaledObject"
    lists = {trigger["metadata"]["listName"] for trigger in scaled["spec"]["triggers"]}
    assert lists == {queue_for_model(BUNDLED_MODEL_ID), bulk_queue_for_model(BUNDLED_MODEL_ID)}

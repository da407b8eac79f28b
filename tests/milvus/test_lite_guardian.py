"""The Lite server ends with the last process using it, however that process ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.workers import REPO_ROOT
from worker.milvus.lite_server import LiteServerFiles, stop_lite_server

pytestmark = pytest.mark.integration

USE_LITE_SERVER = """
import sys
from worker.milvus.lite_server import ensure_lite_server
print(ensure_lite_server(sys.argv[1]), flush=True)
sys.stdin.read()
"""
OPEN_DIRECTLY = """
import sys
import pymilvus
client = pymilvus.MilvusClient(sys.argv[1])
print(client.list_collections())
client.close()
"""
GONE_WITHIN_S = 15.0


def _user(db: Path) -> subprocess.Popen[str]:
    user = subprocess.Popen(
        [sys.executable, "-c", USE_LITE_SERVER, str(db)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert user.stdout is not None
    assert user.stdout.readline().startswith("http://")
    return user


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""  # an unreaped zombie has none


def test_the_server_stops_after_its_last_user_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    first, second = _user(db), _user(db)
    try:
        pid = json.loads(LiteServerFiles.for_path(db).state.read_text())["pid"]
        first.send_signal(signal.SIGKILL)  # no clean-up code runs in it
        first.wait()
        time.sleep(1.5)
        assert _alive(pid), "one user is left: the server must keep running"
        second.send_signal(signal.SIGTERM)
        second.wait()
        state = LiteServerFiles.for_path(db).state
        deadline = time.monotonic() + GONE_WITHIN_S
        while (_alive(pid) or state.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)
        assert not state.exists()  # removed once the server is gone
        # The database is free again for a direct, in-process Milvus Lite.
        direct = subprocess.run(
            [sys.executable, "-c", OPEN_DIRECTLY, str(db)], capture_output=True, text=True, timeout=60
        )
        assert direct.returncode == 0, direct.stderr[-2000:]
    finally:
        for user in (first, second):
            if user.poll() is None:
                user.kill()
                user.wait()
        stop_lite_server(db)

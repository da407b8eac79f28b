"""Stops a Lite server once the last process using it is gone, however that process ended.

Run by :func:`worker.milvus.lite_server.ensure_lite_server` next to each server it starts, as
``python -m worker.milvus.lite_guardian SERVER_PID DATA_DIR``. Users hold a shared flock on the
database's users lock; when this process can take it exclusively (under the start lock, so no new
user attaches meanwhile), nobody uses the server: it is stopped and its record removed, which frees
the database for a direct ``MilvusClient("x.db")`` again.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from typing import Final

from producer.errors import SinkUnavailableError
from worker.milvus.lite_server import (
    LiteServerFiles,
    _acquire_flock,
    _owns_data_dir,
    _read_state,
    _terminate,
)

POLL_S: Final = 0.5
STOP_GRACE_S: Final = 10.0


def _serving(files: LiteServerFiles, server_pid: int) -> bool:
    """Whether the server this guardian watches is still the recorded, running one."""
    state = _read_state(files)
    return state is not None and state.pid == server_pid and _owns_data_dir(state)


def _stop_if_unused(files: LiteServerFiles, server_pid: int) -> bool:
    """Stop the server if no process holds the users lock; return True once there is nothing to watch."""
    try:
        start_fd = _acquire_flock(files.start_lock, 0.0, purpose="check the Lite server's users")
    except SinkUnavailableError:
        return False  # someone is starting or stopping it: look again later
    users_fd = os.open(files.users, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # still in use
        if _serving(files, server_pid):
            _terminate(server_pid, grace_s=STOP_GRACE_S)
            files.state.unlink(missing_ok=True)
        return True
    finally:
        os.close(users_fd)
        os.close(start_fd)


def watch(server_pid: int, data_dir: str) -> None:
    """Poll until the server is gone or unused (then stop it)."""
    files = LiteServerFiles.for_path(data_dir)
    while _serving(files, server_pid):
        if _stop_if_unused(files, server_pid):
            return
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    """Entry point: ``SERVER_PID DATA_DIR``."""
    server_pid, data_dir = int(argv[0]), argv[1]
    watch(server_pid, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

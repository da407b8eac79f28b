"""One ``milvus-lite server`` process owning a Lite data directory, shared by every local worker process.

Milvus Lite lets one process open a data directory; a second gets ``DataDirLockedError``. So the first
worker that needs ``./embedq.db`` starts ``milvus-lite server`` for it (detached, in its own session) and
records ``{"pid", "port", "data_dir"}`` in ``embedq.db.server.json``; later processes attach to it. Starting
and stopping happen under an fcntl lock (``embedq.db.server.lock``) so two processes never start two
servers. Writes through the server must be serialised (the Lite README: concurrent writers are unsafe):
:class:`LiteWriteLock` is that cross-process lock (``embedq.db.write.lock``). The server logs to
``embedq.db.server.log``.

The server ends with the last process using it, however that process ends: each user holds a shared
flock on ``embedq.db.users.lock`` for its lifetime (the kernel drops it when the process dies, even by
SIGKILL), and a small guardian process (:mod:`worker.milvus.lite_guardian`) stops the server once no
one holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from producer.errors import SinkUnavailableError
from worker.ports import free_port

LITE_HOST = "127.0.0.1"
_BIND_ATTEMPTS = 3
_LOG_TAIL_BYTES = 2000


@dataclass(frozen=True)
class LiteServerFiles:
    """The Lite data directory and the files kept next to it."""

    data_dir: Path
    state: Path
    start_lock: Path
    write_lock: Path
    log: Path
    users: Path

    @classmethod
    def for_path(cls, path: str | os.PathLike[str]) -> LiteServerFiles:
        """Name the files for the Lite database at ``path`` (e.g. ``./embedq.db``)."""
        data_dir = Path(path).expanduser().resolve()
        return cls(
            data_dir=data_dir,
            state=data_dir.with_name(data_dir.name + ".server.json"),
            start_lock=data_dir.with_name(data_dir.name + ".server.lock"),
            write_lock=data_dir.with_name(data_dir.name + ".write.lock"),
            log=data_dir.with_name(data_dir.name + ".server.log"),
            users=data_dir.with_name(data_dir.name + ".users.lock"),
        )


@dataclass(frozen=True)
class _ServerState:
    pid: int
    port: int
    data_dir: str
    guardian_pid: int | None = None


def is_lite_path(uri: str) -> bool:
    """Tell whether ``uri`` names a local Milvus Lite database (as pymilvus: a local path ending in .db)."""
    return "://" not in uri and uri.rstrip("/").endswith(".db")


def lite_server_uri(port: int) -> str:
    """Return the URI pymilvus uses to reach a Lite server on this machine."""
    return f"http://{LITE_HOST}:{port}"


def ensure_lite_server(path: str | os.PathLike[str], *, start_timeout_s: float = 60.0) -> str:
    """Return the URI of the Lite server for ``path``, starting one if none is recorded and answering."""
    files = LiteServerFiles.for_path(path)
    files.data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _flock(
        files.start_lock, timeout_s=start_timeout_s * _BIND_ATTEMPTS, purpose="start the Lite server"
    ):
        _register_user(files)  # under the start lock: the guardian cannot stop the server meanwhile
        state = _read_state(files)
        if state is not None and _owns_data_dir(state) and _answers(state.port):
            return lite_server_uri(state.port)
        if state is not None and _owns_data_dir(state):
            # Alive but not answering while nobody is starting it (we hold the start lock): hung.
            _terminate(state.pid, grace_s=5.0)
        port = _start(files, start_timeout_s)
        return lite_server_uri(port)


def stop_lite_server(path: str | os.PathLike[str], *, grace_s: float = 10.0) -> bool:
    """Stop the Lite server recorded for ``path`` (SIGTERM, SIGKILL after ``grace_s``); True if one ran."""
    files = LiteServerFiles.for_path(path)
    if not files.state.exists():
        return False
    with _flock(files.start_lock, timeout_s=grace_s + 60.0, purpose="stop the Lite server"):
        state = _read_state(files)
        stopped = state is not None and _owns_data_dir(state)
        if state is not None and stopped:
            _terminate(state.pid, grace_s=grace_s)
        if state is not None:
            _stop_guardian(state.guardian_pid)
        files.state.unlink(missing_ok=True)
        return stopped


_USER_LOCKS: dict[Path, int] = {}
"""The users lock descriptors this process holds, by path: a process-lifetime resource, never closed."""


def _register_user(files: LiteServerFiles) -> None:
    """Count this process as a user of the Lite server until it ends (a shared flock; see the module)."""
    if files.users in _USER_LOCKS:
        return
    fd = os.open(files.users, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # never waits long: the guardian locks it only under the start lock
    _USER_LOCKS[files.users] = fd


class LiteWriteLock:
    """Serialises writes to one Lite database across processes (fcntl) and the threads of this one.

    The lock file also counts the writes made under it (8 bytes, bumped as each write ends), so
    a sync can tell that nobody wrote to the database since it sealed its manifest, without a
    row count (a scan on Lite). ``counted=False`` writes (collection properties) leave it alone.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout_s: float = 120.0, counted: bool = True
    ) -> None:
        self.lock_path = LiteServerFiles.for_path(path).write_lock
        self.timeout_s = timeout_s
        self.counted = counted
        self._path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> LiteWriteLock:
        if not self._thread_lock.acquire(timeout=self.timeout_s):
            raise SinkUnavailableError(
                f"another thread held the Lite write lock {self.lock_path} for over {self.timeout_s} s: "
                "check for a stuck write in this worker, then retry"
            )
        try:
            self._fd = _acquire_flock(self.lock_path, self.timeout_s, purpose="write to the Lite database")
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if self.counted:
                    os.pwrite(fd, (_write_count(fd) + 1).to_bytes(8, "little"), 0)
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        self._thread_lock.release()

    def uncounted(self) -> LiteWriteLock:
        """Return a lock on the same database whose writes are not counted."""
        return LiteWriteLock(self._path, timeout_s=self.timeout_s, counted=False)

    def writes(self) -> int:
        """Return how many counted writes were made under this lock file (0 if it is new)."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            return _write_count(fd)
        finally:
            os.close(fd)


def _write_count(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def _acquire_flock(lock_path: Path, timeout_s: float, *, purpose: str) -> int:
    """Open ``lock_path`` and take an exclusive flock on it within ``timeout_s``; return the descriptor."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout_s
    # Short pauses: a longer one leaves the lock idle between writers (measured in
    # bench/bench_backfill.py: up to a fifth of a backfill's time at 50 ms).
    pause_s = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SinkUnavailableError(
                    f"could not {purpose}: another process has held {lock_path} for over {timeout_s} s; "
                    "check for a stuck embedq process, then retry"
                ) from None
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.001)


@contextlib.contextmanager
def _flock(lock_path: Path, *, timeout_s: float, purpose: str) -> Iterator[None]:
    fd = _acquire_flock(lock_path, timeout_s, purpose=purpose)
    try:
        yield
    finally:
        os.close(fd)


def _read_state(files: LiteServerFiles) -> _ServerState | None:
    try:
        raw = json.loads(files.state.read_text(encoding="utf-8"))
        guardian = raw.get("guardian_pid")
        return _ServerState(
            pid=int(raw["pid"]),
            port=int(raw["port"]),
            data_dir=str(raw["data_dir"]),
            guardian_pid=None if guardian is None else int(guardian),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or from another version: treat as absent, a fresh start rewrites it


def _write_state(files: LiteServerFiles, state: _ServerState) -> None:
    tmp = files.state.with_name(files.state.name + f".{os.getpid()}.tmp")
    record = {
        "pid": state.pid,
        "port": state.port,
        "data_dir": state.data_dir,
        "guardian_pid": state.guardian_pid,
    }
    tmp.write_text(json.dumps(record))
    os.replace(tmp, files.state)


def _owns_data_dir(state: _ServerState) -> bool:
    """Tell whether ``state.pid`` is still a milvus-lite server for ``state.data_dir`` (pids get reused)."""
    _reap_if_child(state.pid)
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return _pid_exists(state.pid)  # no /proc (not Linux): trust the pid
    args = [arg.decode(errors="replace") for arg in cmdline]
    return any("milvus_lite" in arg or "milvus-lite" in arg for arg in args) and state.data_dir in args


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_if_child(pid: int) -> None:
    """Collect an exited server this process started, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((LITE_HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _start(files: LiteServerFiles, timeout_s: float) -> int:
    """Start a detached server on a free port, wait until it answers, record it; return the port."""
    for _ in range(_BIND_ATTEMPTS):
        port = free_port(LITE_HOST)
        log_offset = files.log.stat().st_size if files.log.exists() else 0
        with open(files.log, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "milvus_lite",
                    "server",
                    "--data-dir",
                    str(files.data_dir),
                    "--host",
                    LITE_HOST,
                    "--port",
                    str(port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a worker's Ctrl+C does not stop it
            )
        if _wait_answering(proc, port, timeout_s):
            state = _ServerState(pid=proc.pid, port=port, data_dir=str(files.data_dir))
            _write_state(files, state)  # first: the guardian watches the recorded server
            guardian_pid = _start_guardian(files, proc.pid)
            _write_state(files, replace(state, guardian_pid=guardian_pid))
            return port
        log_tail = _read_log_tail(files.log, log_offset)
        if proc.poll() is None:
            _terminate(proc.pid, grace_s=5.0)
            raise SinkUnavailableError(
                f"the Milvus Lite server for {files.data_dir} did not answer on port {port} within "
                f"{timeout_s} s; see {files.log}. Last output:\n{log_tail}"
            )
        if "bind" not in log_tail.lower():
            raise SinkUnavailableError(_start_failure_message(files, log_tail))
    raise SinkUnavailableError(
        f"the Milvus Lite server for {files.data_dir} could not bind a free port in {_BIND_ATTEMPTS} "
        f"attempts; see {files.log}"
    )


def _start_guardian(files: LiteServerFiles, server_pid: int) -> int:
    """Start the process that stops the server once its last user is gone (detached, like the server)."""
    with open(files.log, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.milvus.lite_guardian", str(server_pid), str(files.data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ).pid


def _stop_guardian(pid: int | None) -> None:
    """End the guardian of a server stopped by its last user: it has nothing left to watch."""
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"worker.milvus.lite_guardian" in cmdline:  # still the guardian: pids get reused
        _terminate(pid, grace_s=2.0)


def _wait_answering(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _answers(port):
            return True
        time.sleep(0.05)
    return False


def _start_failure_message(files: LiteServerFiles, log_tail: str) -> str:
    if "DataDirLocked" in log_tail or "LOCK" in log_tail:
        return (
            f"the Milvus Lite database {files.data_dir} is open in another process (for example a "
            "MilvusClient on the .db path): close that process, or connect it through the shared Lite "
            f"server instead; see {files.log}"
        )
    return (
        f"the Milvus Lite server for {files.data_dir} exited at start; see {files.log}. "
        f"Last output:\n{log_tail}"
    )


def _read_log_tail(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, "rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _terminate(pid: int, *, grace_s: float) -> None:
    """SIGTERM the server (SIGINT does not stop it), SIGKILL it if it is still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap_if_child(pid)
            if not _pid_exists(pid) or _is_exited_zombie(pid):
                return
            time.sleep(0.05)
    raise SinkUnavailableError(
        f"the Milvus Lite server (pid {pid}) did not exit after SIGKILL: kill it by hand"
    )


def _is_exited_zombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie with no thread left.

    A zombie leader's other threads can still hold the port: the process is gone only with its last thread.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z" and threads <= 1

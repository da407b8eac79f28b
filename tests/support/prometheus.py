"""A private Prometheus server (Debian package `prometheus`) scraping given targets, and its query API.

Used by the metrics integration test and by `scripts/dashboard_workload.py` (the dashboard's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.ports import free_port

START_TIMEOUT_S = 30.0


def prometheus_binary() -> str | None:
    """The `prometheus` binary on PATH or in /usr/bin, or None."""
    return shutil.which("prometheus", path=f"{os.environ.get('PATH', '')}:/usr/bin")


@dataclass
class PrometheusServer:
    """A running Prometheus: its HTTP base URL and process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, params: Mapping[str, str | float]) -> Any:
        """GET ``/api/v1/<path>`` with ``params``; the ``data`` member of a successful answer."""
        query = urllib.parse.urlencode({key: str(value) for key, value in params.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {path} {params}: {body}")
        return body["data"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        result: list[dict[str, Any]] = self.api("query", {"query": expr})["result"]
        return result

    def wait_for_targets(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until ``count`` targets answered a scrape (the first comes seconds after start)."""
        deadline = time.monotonic() + timeout_s
        while sum(item["value"][1] == "1" for item in self.instant("up")) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not scrape {count} targets in {timeout_s:g} s")
            time.sleep(0.2)

    def ready(self) -> bool:
        """Whether the server answers its readiness probe."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def scrape_config(jobs: Mapping[str, Sequence[str]], interval_s: float) -> str:
    """A prometheus.yml scraping each job's ``host:port`` targets every ``interval_s``."""
    lines = [
        f"global: {{scrape_interval: {interval_s:g}s, scrape_timeout: {interval_s:g}s}}",
        "scrape_configs:",
    ]
    for job, targets in jobs.items():
        quoted = ", ".join(f"'{target}'" for target in targets)
        lines += [f"  - job_name: {job}", f"    static_configs: [{{targets: [{quoted}]}}]"]
    return "\n".join(lines) + "\n"


def start_prometheus(
    binary: str, jobs: Mapping[str, Sequence[str]], workdir: Path, interval_s: float = 1.0
) -> PrometheusServer:
    """Start Prometheus on a free loopback port, its config and data under ``workdir``; wait until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(jobs, interval_s))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Prometheus did not start; its log:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return server


@contextmanager
def prometheus(
    binary: str, jobs: Mapping[str, Sequence[str]], workdir: Path, interval_s: float = 1.0
) -> Iterator[PrometheusServer]:
    """`start_prometheus` as a context manager that stops the server on exit."""
    server = start_prometheus(binary, jobs, workdir, interval_s)
    try:
        yield server
    finally:
        server.stop()

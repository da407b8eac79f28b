"""prometheus_client's multiprocess mode for the prefork pool: one directory of value files per worker.

Every pool process writes its counters and histograms to files named by its pid; the parent
sums all files on each scrape, including those of pool processes that died, so counters stay
exact when a pool process is killed and replaced. Only live gauges are dropped for dead pids.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from producer.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def prepare_multiprocess_dir() -> Path:
    """Create an empty directory for this worker's value files and point prometheus_client at it.

    Must run before anything imports ``prometheus_client`` in this process (it picks its value
    class at import time); raises ConfigError otherwise, since counts would silently stay per process.
    """
    import sys

    if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_DIR_VARIABLE):
        raise ConfigError(
            "prometheus_client was imported before the worker enabled its multiprocess mode: "
            "metrics of the pool processes would not add up; report this as a bug"
        )
    path = Path(tempfile.mkdtemp(prefix="embedq-metrics-"))
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Delete the value files when the worker stops (they describe only this run)."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(MULTIPROC_DIR_VARIABLE) == str(path):
        del os.environ[MULTIPROC_DIR_VARIABLE]


def mark_dead_gauge_processes(path: Path) -> None:
    """Drop the live-gauge files of processes that are gone (counters and histograms are kept)."""
    from prometheus_client import multiprocess

    dead = {
        int(match.group(1))
        for name in glob.glob(os.path.join(path, "gauge_live*_*.db"))
        if (match := _GAUGE_FILE.search(name)) is not None and not _alive(int(match.group(1)))
    }
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """Return a registry that reads every process's value files in ``path``."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry

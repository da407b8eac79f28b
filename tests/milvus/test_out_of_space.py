"""Milvus out of disk space is a transient failure (free space, then retry), not bad input."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException

from producer.errors import SinkUnavailableError
from worker.milvus.connection import is_out_of_space
from worker.milvus.lite_server import stop_lite_server
from worker.milvus.sink import open_sink


def test_the_lite_out_of_disk_error_is_recognised() -> None:
    # What Milvus Lite 3.2 raised on a full disk, seen on a 3 MB tmpfs.
    assert is_out_of_space(MilvusException(code=1, message="[Errno 28] No space left on device"))
    assert is_out_of_space(OSError(28, "No space left on device"))
    assert not is_out_of_space(MilvusException(code=1, message="field text exceeds max length"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs, where this machine allows mounting one (root in a container that permits it)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        stop_lite_server(mount_point / "full.db")
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True, capture_output=True)


@pytest.mark.integration
def test_a_full_disk_under_milvus_lite_is_a_transient_error(small_disk: Path) -> None:
    sink = open_sink(str(small_disk / "full.db"), None, "c", "m", 8)
    try:
        with pytest.raises(SinkUnavailableError, match="out of disk space"):
            for batch in range(200):
                ids = [f"d{batch}-{row}" for row in range(50)]
                sink.upsert(ids, ["x" * 20_000] * 50, [{}] * 50, np.ones((50, 8), dtype=np.float32))
    finally:
        sink.close()

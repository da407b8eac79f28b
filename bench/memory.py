"""Memory of a loaded worker process and of the processes it forks (Celery's prefork pool)."""

from __future__ import annotations

import os
from pathlib import Path


def _smaps(pid: int | str = "self") -> dict[str, int]:
    """Return /proc/<pid>/smaps_rollup in KiB by field."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields


def _peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM); unlike ru_maxrss it does not inherit the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def fork_memory_report(model_dir: Path, children: int) -> None:
    """Load the model, fork ``children`` processes that each encode, and print RSS/USS per process.

    Run it in a fresh process (``python -m bench.memory``) so that the parent holds only the model.
    """
    import time

    baseline_kib = _smaps()["Rss"]
    start = time.perf_counter()
    from worker.encoding.encoder import StaticEncoder

    encoder = StaticEncoder.from_pretrained(model_dir)
    print(
        f"model load: {time.perf_counter() - start:.2f} s; process before loading: RSS {baseline_kib / 1024:.1f} MiB"
    )
    parent = _smaps()
    peak_kib = _peak_rss_kib()
    print(
        f"worker parent (model loaded): RSS {parent['Rss'] / 1024:.1f} MiB, peak RSS {peak_kib / 1024:.1f} MiB, "
        f"table {encoder.table_nbytes / 2**20:.1f} MiB"
    )
    texts = [f"document number {i} about static embeddings and task queues" for i in range(2_000)]
    pipes = []
    for _ in range(children):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: encode, then report its own memory
            os.close(read_fd)
            encoder.encode(texts)
            child = _smaps()
            peak = _peak_rss_kib()
            os.write(
                write_fd, f"{child['Rss']} {child['Private_Clean'] + child['Private_Dirty']} {peak}".encode()
            )
            os._exit(0)
        os.close(write_fd)
        pipes.append((pid, read_fd))
    for pid, read_fd in pipes:
        rss, private, peak = (int(x) for x in os.read(read_fd, 200).split())
        os.waitpid(pid, 0)
        print(
            f"forked child after encoding 2k texts: RSS {rss / 1024:.1f} MiB (mostly shared), "
            f"private {private / 1024:.1f} MiB, peak RSS {peak / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    import sys

    from worker.encoding.loader import BUNDLED_MODEL_DIR

    fork_memory_report(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLED_MODEL_DIR, children=2)

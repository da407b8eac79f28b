"""Milvus bulk insert against embedq's upserts, on the standalone server of the ``milvus`` wheel.

Usage: flock /tmp/milvus-server.lock python -m bench.bench_bulk_insert [--rows 20000] [--batch 1000]
                                                                      [--formats json,numpy]

The wheel's server keeps its segments in local storage (``common.storageType: local``, no MinIO),
so a bulk insert reads its files from that server's own disk. The same rows (stdlib docstring
paragraphs, random unit vectors, 256 dims, the embedq schema) are written twice into fresh
collections: once by ``MilvusSink.upsert`` in batches (what a backfill's workers do), once as a
row-based JSON file, and once as one NumPy file per field, placed in the server's local storage
and imported with ``utility.do_bulk_insert`` (waited until the import is completed, then until
the rows are counted). Printed: rows/s and the server process's CPU microseconds per row for
each (writing the files is not counted), and the rows each collection counts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench.bench_backfill import server_target
from tests.support.corpora import paragraphs
from worker.milvus.sink import open_sink

MODEL = "bench/bulk-insert"
DIM = 256


def _server_cpu_s(pid: int) -> float:
    process = psutil.Process(pid)
    total = sum(
        child.cpu_times().user + child.cpu_times().system for child in process.children(recursive=True)
    )
    times = process.cpu_times()
    return total + times.user + times.system


def _bulk_insert(
    uri: str, pid: int, collection: str, files: list[Path], rows: int
) -> tuple[float, float, int]:
    """Import ``files`` into a fresh ``collection``; return wall s, server CPU s, rows counted."""
    from pymilvus import utility
    from pymilvus.client.types import BulkInsertState

    sink = open_sink(uri, None, collection, MODEL, DIM)
    sink.ensure_collection()
    cpu, started = _server_cpu_s(pid), time.perf_counter()
    task_id = utility.do_bulk_insert(collection, files=[str(path) for path in files], using="bench")
    ended = (
        BulkInsertState.ImportCompleted,
        BulkInsertState.ImportFailed,
        BulkInsertState.ImportFailedAndCleaned,
    )
    while (state := utility.get_bulk_insert_state(task_id, using="bench")).state not in ended:
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    if state.state != BulkInsertState.ImportCompleted:
        sink.close()
        raise RuntimeError(f"bulk insert into {collection} failed: {state.state_name}: {state.failed_reason}")
    cpu_s = _server_cpu_s(pid) - cpu
    deadline = time.monotonic() + 300  # imported segments are counted once indexed and loaded
    while (count := sink.count()) < rows and time.monotonic() < deadline:
        time.sleep(0.5)
    index = utility.index_building_progress(collection, using="bench")
    print(
        f"  {collection}: completed after {wall_s:.1f} s ({cpu_s / rows * 1e6:.0f} us/row of server CPU); "
        f"{count:,} rows counted after {time.perf_counter() - started:.1f} s "
        f"({(_server_cpu_s(pid) - cpu) / rows * 1e6:.0f} us/row); index progress {index}"
    )
    sink.close()
    return wall_s, cpu_s, count


def main() -> None:
    """Write the rows by upserts and by bulk inserts; print the figures."""
    import warnings

    from pymilvus import Collection, connections, utility

    warnings.filterwarnings("ignore", message=".*ORM-style PyMilvus API")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--formats", default="json,numpy")
    args = parser.parse_args()
    texts = paragraphs(args.rows)[: args.rows]
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((args.rows, DIM)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"doc-{i}" for i in range(args.rows)]
    results: dict[str, tuple[float, float, int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="embedq-bench-bulk-") as tmp_name,
        server_target(Path(tmp_name)) as target,
    ):
        storage = Path(tmp_name) / "milvus-server" / "data"
        sink = open_sink(target.uri, None, "bench_upsert", MODEL, DIM)
        sink.ensure_collection()
        cpu, started = _server_cpu_s(target.pid), time.perf_counter()
        for start in range(0, args.rows, args.batch):
            end = min(start + args.batch, args.rows)
            sink.upsert(ids[start:end], texts[start:end], [{}] * (end - start), vectors[start:end])
        wall_s = time.perf_counter() - started
        results["upsert (MilvusSink, batches)"] = (wall_s, _server_cpu_s(target.pid) - cpu, sink.count())
        sink.close()
        # What a bulk import's completion includes: sealed, flushed segments with their index built.
        connections.connect(alias="bench", uri=target.uri)
        Collection("bench_upsert", using="bench").flush()
        utility.wait_for_index_building_complete("bench_upsert", using="bench")
        results["upsert, then flush + index built"] = (
            time.perf_counter() - started,
            _server_cpu_s(target.pid) - cpu,
            results["upsert (MilvusSink, batches)"][2],
        )

        json_file = storage / "bench_rows.json"
        rows = (
            []
            if "json" not in args.formats
            else [
                {"id": i, "vector": v.tolist(), "text": t, "metadata": {}}
                for i, v, t in zip(ids, vectors, texts, strict=True)
            ]
        )
        json_file.write_text(json.dumps({"rows": rows}))
        numpy_dir = storage / "bench_numpy"
        numpy_dir.mkdir()
        columns = {
            "id": np.array(ids),
            "vector": vectors,
            "text": np.array(texts),
            "metadata": np.array(["{}"] * args.rows),
        }
        numpy_files = []
        for field, column in columns.items():
            np.save(numpy_dir / f"{field}.npy", column)
            numpy_files.append(numpy_dir / f"{field}.npy")
        for name, files in (("json", [json_file]), ("numpy", numpy_files)):
            if name not in args.formats.split(","):
                continue
            try:
                results[f"bulk insert ({name} files)"] = _bulk_insert(
                    target.uri, target.pid, f"bench_bulk_{name}", files, args.rows
                )
            except RuntimeError as exc:
                print(f"  {exc}")
    for name, (wall_s, cpu_s, count) in results.items():
        print(
            f"{name:<30} {args.rows / wall_s:>8,.0f} rows/s  server CPU {cpu_s / args.rows * 1e6:6.1f} us/row  "
            f"({count:,} rows counted)"
        )


if __name__ == "__main__":
    main()

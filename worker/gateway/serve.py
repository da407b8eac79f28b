"""``embedq serve``: the gateway on uvicorn, with an embedded broker and local workers if none is set."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from producer.errors import ConfigError
from producer.settings import Settings

APP_FACTORY = "worker.gateway.app:create_app_from_environment"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

SERVE_EPILOG = """\
examples:
  embedq serve                                  # local: embedded broker and workers
  EMBEDQ_BROKER_URL=redis://localhost:6379/0 embedq serve --host 0.0.0.0 --port 8080
  EMBEDQ_API_KEYS=key1,key2 embedq serve        # every route but /health, /ready, /metrics needs a key
  embedq serve --processes 2                    # two gateway processes on one port

routes: POST /v1/embeddings, GET /v1/models (OpenAI); POST /embed, POST /, GET /info (TEI);
POST /v1/jobs, GET /v1/jobs/ID, GET /v1/jobs/ID/result; POST /v1/search; GET /health, /ready,
/metrics, /docs.
"""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``embedq serve``."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="gateway processes sharing the port (default: 1); each has its own batcher, so HTTP "
        "handling is not held to one core by the GIL",
    )


@contextlib.contextmanager
def _broker(settings: Settings) -> Iterator[Settings]:
    if os.environ.get("EMBEDQ_BROKER_URL", "").strip():
        yield settings
        return
    from worker.local.cluster import LocalCluster

    with LocalCluster(settings, needs_milvus=True) as cluster:
        print(f"embedq: {cluster.describe()}", file=sys.stderr, flush=True)
        yield cluster.settings


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the gateway until interrupted; return the exit code."""
    import uvicorn

    from worker.gateway.app import create_app
    from worker.gateway.config import load_gateway_settings

    if args.processes < 1:
        raise ConfigError(f"--processes must be a positive whole number, got {args.processes}")
    config = load_gateway_settings()
    with _broker(settings) as served:
        print(
            f"embedq: serving on http://{args.host}:{args.port} with {args.processes} process(es) "
            "(docs at /docs)",
            file=sys.stderr,
            flush=True,
        )
        options: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "loop": "uvloop",
            "http": "httptools",
            # Request lines are not needed for operation and cost time on every request.
            "access_log": False,
            "log_level": "warning",
            # Client addresses are not used, and the server header tells a caller nothing it needs.
            "proxy_headers": False,
            "server_header": False,
        }
        if args.processes == 1:
            uvicorn.run(create_app(served, config), **options)
        else:
            # Each process builds its app from the environment: point it at the broker in use.
            os.environ.update(
                EMBEDQ_BROKER_URL=served.broker_url,
                EMBEDQ_RESULT_BACKEND=served.result_backend,
                EMBEDQ_MILVUS_URI=served.milvus_uri,
            )
            uvicorn.run(APP_FACTORY, factory=True, workers=args.processes, **options)
    return 0

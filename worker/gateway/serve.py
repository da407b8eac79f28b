"""``embedq serve``: the gateway on uvicorn, with an embedded broker and local workers if none is set."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from producer.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

SERVE_EPILOG = """\
examples:
  embedq serve                                  # local: embedded broker and workers
  EMBEDQ_BROKER_URL=redis://localhost:6379/0 embedq serve --host 0.0.0.0 --port 8080
  EMBEDQ_API_KEYS=key1,key2 embedq serve        # every route but /health, /ready, /metrics needs a key

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

    config = load_gateway_settings()
    with _broker(settings) as served:
        app = create_app(served, config)
        print(
            f"embedq: serving on http://{args.host}:{args.port} (docs at /docs)", file=sys.stderr, flush=True
        )
        # access_log off: request lines are not needed for operation and cost time on every request.
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            # Client addresses are not used, and the server header tells a caller nothing it needs.
            proxy_headers=False,
            server_header=False,
        )
    return 0

"""The worker's HTTP endpoint: ``/metrics`` (Prometheus text), ``/health`` and ``/ready``."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from producer.errors import ConfigError

logger = logging.getLogger(__name__)


class MetricsServer:
    """Serves the three routes on a daemon thread; the port is bound in the constructor.

    ``render_metrics`` returns (body, content type); ``is_ready`` answers /ready (200 or 503).
    """

    def __init__(
        self,
        port: int,
        render_metrics: Callable[[], tuple[bytes, str]],
        is_ready: Callable[[], bool],
        host: str = "0.0.0.0",
    ) -> None:
        handler = type("Handler", (_Handler,), {"render_metrics": render_metrics, "is_ready": is_ready})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"metrics port {port} is already in use: pick a free port with --metrics-port "
                    "(or EMBEDQ_METRICS_PORT), or stop the process holding it"
                ) from exc
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve requests on a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedq-metrics", daemon=True)
        self._thread.start()
        logger.info("serving /metrics, /health and /ready on port %d", self.port)

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:  # shutdown() waits for serve_forever, which must have started
            self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    render_metrics: Callable[[], tuple[bytes, str]]
    is_ready: Callable[[], bool]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = type(self).render_metrics()
            self._reply(HTTPStatus.OK, body, content_type)
        elif path == "/health":
            self._reply(HTTPStatus.OK, b"ok\n")
        elif path == "/ready":
            if type(self).is_ready():
                self._reply(HTTPStatus.OK, b"ready\n")
            else:
                self._reply(
                    HTTPStatus.SERVICE_UNAVAILABLE, b"not ready: model not loaded or broker unreachable\n"
                )
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found: try /metrics, /health or /ready\n")

    def _reply(
        self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: keep them out of the worker log."""

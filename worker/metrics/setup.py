"""Wires metrics, probes and JSON logs into a worker process, in the parent, before the pool forks."""

from __future__ import annotations

import atexit
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from producer.celery_config import broker_client
from producer.settings import Settings
from worker.metrics.recording import disable_recording, enable_recording

if TYPE_CHECKING:
    from celery import Celery

    from worker.metrics.sampler import BrokerSampler
    from worker.metrics.server import MetricsServer

logger = logging.getLogger(__name__)


class WorkerObservability:
    """The metrics endpoint (if ``settings.metrics_port``) and the log format of one worker.

    Built before the model loads, so a taken port fails at once; :meth:`attach` then starts
    counting, sampling and serving; :meth:`close` stops them and deletes the value files.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir: Path | None = None
        self._server: MetricsServer | None = None
        self._sampler: BrokerSampler | None = None
        if settings.log_format == "json":
            from worker.metrics.logs import install_worker_json_logs

            install_worker_json_logs()
        if settings.metrics_port is None:
            return
        from worker.metrics.multiprocess import prepare_multiprocess_dir, remove_multiprocess_dir
        from worker.metrics.server import MetricsServer

        self._server = MetricsServer(settings.metrics_port, self._render, self._ready)
        try:
            self._dir = prepare_multiprocess_dir()
        except Exception:
            self._server.close()
            raise
        # Also when the model fails to load before close() is reached (pool processes leave with
        # os._exit and never run this).
        atexit.register(remove_multiprocess_dir, self._dir)

    def celery_options(self) -> list[str]:
        """Options of the ``celery`` command before ``worker`` (JSON logs: no banner on stdout)."""
        return ["--quiet"] if self._settings.log_format == "json" else []

    def attach(self, app: Celery, model_id: str) -> None:
        """Count the app's tasks and start serving; call once the model is loaded, before the pool forks."""
        log_tasks = self._settings.log_format == "json"
        if self._server is None or self._dir is None:
            enable_recording(None, model_id, log_tasks=log_tasks)
            return
        from worker.metrics.definitions import build_worker_metrics
        from worker.metrics.sampler import BrokerSampler

        enable_recording(build_worker_metrics(), model_id, log_tasks=log_tasks)
        queues = [queue.name for queue in app.conf.task_queues or ()]
        self._sampler = BrokerSampler(partial(broker_client, app), queues)
        self._sampler.model_loaded = True
        self._sampler.start()
        self._server.start()

    def _render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from worker.metrics.multiprocess import mark_dead_gauge_processes, multiprocess_registry

        if self._dir is None:  # served only once the directory exists
            return b"", CONTENT_TYPE_LATEST
        mark_dead_gauge_processes(self._dir)
        registry = multiprocess_registry(self._dir)
        if self._sampler is not None:
            registry.register(self._sampler)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _ready(self) -> bool:
        return self._sampler is not None and self._sampler.ready()

    def close(self) -> None:
        """Stop serving and sampling; delete this run's value files."""
        disable_recording()
        if self._server is not None:
            self._server.close()
        if self._sampler is not None:
            self._sampler.stop()
        if self._dir is not None:
            from worker.metrics.multiprocess import remove_multiprocess_dir

            remove_multiprocess_dir(self._dir)

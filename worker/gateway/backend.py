"""Backend: the gateway's way onto the queues, through the producer's public EmbeddingClient.

It keeps nothing a restart would lose: jobs and results live on the broker, the set of live
models is read from the workers' presence keys (cached for a second), and clients are per model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from celery import Celery
from redis.exceptions import RedisError

from producer.batching import BatchLimits
from producer.celery_config import build_celery_app
from producer.client import EmbeddingClient
from producer.errors import BrokerUnavailableError, InvalidInputError, MessageDecodeError, NoWorkerError
from producer.job import Job
from producer.protocol.messages import WorkerPresence
from producer.protocol.names import QUEUE_PREFIX, Kind, presence_key
from producer.protocol.texts import validate_texts
from producer.sentinel import async_redis_for
from producer.settings import Settings, redact_url
from worker.gateway.batcher import LoopBatcher
from worker.gateway.errors import ApiError
from worker.gateway.presence import ServedModel

_LIVE_MODELS_TTL_S = 1.0
_PRESENCE_PATTERN = presence_key(QUEUE_PREFIX + "*")


@dataclass(frozen=True)
class Embedded:
    """Vectors of one request with the tokens pooled and where the time went (seconds)."""

    vectors: np.ndarray
    tokens: int
    enqueue_s: float
    wait_s: float


class Backend:
    """Embeds texts on the workers of any live model and reads jobs; one per gateway process."""

    def __init__(
        self, settings: Settings, *, request_timeout_s: float, max_texts_per_job: int | None
    ) -> None:
        self.settings = settings
        self.default_model = settings.model_id
        self.request_timeout_s = request_timeout_s
        self.app: Celery = build_celery_app(settings, "embedq-gateway")
        self._max_texts_per_job = max_texts_per_job
        self._clients: dict[str, EmbeddingClient] = {}
        self._redis = async_redis_for(  # a sentinel:// URL goes through the sentinels' current primary
            settings.broker_url, settings.sentinel_master, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self._live: dict[str, int] = {}
        self._live_read_at = -1.0
        self._live_refresh: asyncio.Future[dict[str, int]] | None = None
        self._served = ServedModel(self._redis, _LIVE_MODELS_TTL_S)
        self._results_redis = (
            self._redis
            if settings.result_backend == settings.broker_url
            else async_redis_for(
                settings.result_backend,
                settings.sentinel_master,
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
        )
        self._batcher = (
            None
            if settings.batch_wait_ms is None
            else LoopBatcher(
                self.app,
                self._results_redis,
                BatchLimits(
                    settings.batch_wait_ms,
                    settings.batch_max_texts,
                    settings.batch_max_chars,
                    settings.batch_max_in_flight,
                ),
                max_queue_depth=settings.max_queue_depth,
            )
        )

    async def close(self) -> None:
        """Close the broker connections."""
        if self._batcher is not None:
            await self._batcher.close()
        for client in self._clients.values():
            client.close()
        await self._redis.aclose()
        if self._results_redis is not self._redis:
            await self._results_redis.aclose()
        self.app.close()

    def client(self, model: str) -> EmbeddingClient:
        """Return the client of ``model`` (created on first use; all share one Celery app)."""
        client = self._clients.get(model)
        if client is None:
            client = self._clients[model] = EmbeddingClient(
                app=self.app,
                model=model,
                max_texts_per_task=self.settings.max_texts_per_request,
                max_text_chars=self.settings.max_text_chars,
                max_texts_per_job=self._max_texts_per_job,
                max_queue_depth=self.settings.max_queue_depth,
                worker_wait_s=0.0,  # an HTTP caller gets 503 at once and retries
                batch_wait_ms=self.settings.batch_wait_ms,
                batch_max_texts=self.settings.batch_max_texts,
                batch_max_chars=self.settings.batch_max_chars,
                batch_max_in_flight=self.settings.batch_max_in_flight,
            )
        return client

    async def ping(self) -> None:
        """Raise BrokerUnavailableError unless the broker answers."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def live_models(self, *, wait_for_fresh: bool = False) -> dict[str, int]:
        """Return {model id: dim} of the models some worker serves now (cached for a second).

        One read refreshes the cache while concurrent requests keep using the previous answer, so a
        burst of requests does not send a burst of SCANs when the cache expires; ``wait_for_fresh``
        waits for that read instead (to confirm a miss).
        """
        if time.monotonic() - self._live_read_at < _LIVE_MODELS_TTL_S:
            return self._live
        if self._live_refresh is None or self._live_refresh.done():
            self._live_refresh = asyncio.ensure_future(self._read_live_models())
            # A failed background refresh is not an error of its own: the next request tries again.
            self._live_refresh.add_done_callback(lambda done: done.cancelled() or done.exception())
        if wait_for_fresh or self._live_read_at < 0:  # or nothing read yet
            return await asyncio.shield(self._live_refresh)
        return self._live

    async def _read_live_models(self) -> dict[str, int]:
        live: dict[str, int] = {}
        try:
            keys = [key async for key in self._redis.scan_iter(match=_PRESENCE_PATTERN, count=500)]
            values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        for raw in values:
            if not isinstance(raw, bytes):
                continue
            try:
                presence = WorkerPresence.decode(raw)
            except MessageDecodeError:
                continue
            live[presence.model] = presence.dim
        self._live, self._live_read_at = live, time.monotonic()
        return live

    async def model_dim(self, model: str | None) -> tuple[str, int]:
        """Return (model id, dim) of a live model: 404 for one no worker serves, 503 if none is live."""
        model_id = self.default_model if model is None else model
        try:
            dim = await self._served.dim(model_id)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if dim is not None:
            return model_id, dim
        live = await self.live_models()  # the full list (a SCAN) only to answer a miss
        if model_id not in live:
            live = await self.live_models(wait_for_fresh=True)  # an expired cache may miss a new worker
        if model_id in live:
            return model_id, live[model_id]
        if not live:
            raise NoWorkerError(
                f"no worker serves any model on this broker, so model {model_id!r} cannot be embedded: "
                "start one with `embedq worker`"
            )
        raise ApiError(
            404,
            f"the model {model_id!r} is not served by any live worker; served: {sorted(live)}",
            param="model",
            code="model_not_found",
        )

    async def embed(self, model: str, texts: Sequence[str], kind: Kind = "document") -> Embedded:
        """Enqueue ``texts`` for ``model`` and await their vectors without holding a thread.

        The request carries the gateway's timeout as its deadline, so a worker that reaches it only
        after the caller got its 504 drops it unencoded. (Jobs, sent through the same clients,
        carry none: the clients have no default deadline.)
        """
        client = self.client(model)
        started = time.perf_counter()
        if self._batcher is not None and self._batched(client, texts):
            # Small requests are coalesced on the event loop: no thread, no Job, one future each.
            checked = validate_texts(texts, max_texts=None, max_text_chars=self.settings.max_text_chars)
            if not checked:
                raise InvalidInputError("texts is empty: pass at least one text")
            batched = await self._batcher.embed(client, kind, checked, self.request_timeout_s)
            sent_at = batched.sent_at or started
            return Embedded(batched.vectors, batched.tokens, sent_at - started, time.perf_counter() - sent_at)
        submit = client.embed_queries if kind == "query" else client.embed_documents
        job: Job = await asyncio.to_thread(submit, texts, timeout_s=self.request_timeout_s)
        enqueued = time.perf_counter()
        vectors = await job.result_async(timeout_s=self.request_timeout_s)
        tokens = sum(job.token_counts) if job.token_counts is not None else 0
        return Embedded(vectors, tokens, enqueued - started, time.perf_counter() - enqueued)

    def _batched(self, client: EmbeddingClient, texts: Sequence[str]) -> bool:
        """Whether a request of ``texts`` is coalesced (the client's rule: small, for the fast queue)."""
        settings = self.settings
        return (
            settings.batch_wait_ms is not None
            and len(texts) <= min(settings.batch_max_texts, settings.max_texts_per_request)
            and client.queue_for(len(texts)) == client.queue  # not a bulk request
            and sum(map(len, texts)) <= settings.batch_max_chars
        )

    def _unavailable(self, exc: BaseException) -> BrokerUnavailableError:
        url = redact_url(self.settings.broker_url)
        return BrokerUnavailableError(f"the broker at {url} does not answer: {exc}; check EMBEDQ_BROKER_URL")

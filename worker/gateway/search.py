"""``POST /v1/search``: embed a query with the model a collection was filled with, return its nearest hits."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import grpc
from pymilvus.exceptions import MilvusException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from producer.errors import ConfigError, SinkUnavailableError
from producer.settings import Settings
from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings
from worker.gateway.errors import ApiError, bad_request
from worker.gateway.limits import read_json, timing_headers
from worker.milvus.connection import connect_milvus, describe_error
from worker.milvus.lite_server import LiteWriteLock, ensure_lite_server, is_lite_path
from worker.milvus.schema import MAX_TOP_K, MODEL_PROPERTY
from worker.milvus.sink import MilvusSink

DEFAULT_TOP_K = 10


class Collections:
    """Open Milvus sinks by collection, each for the model and dim the collection records (a cache only)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sinks: dict[str, MilvusSink] = {}
        self._client: Any = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the Milvus connection."""
        if self._client is not None:
            self._client.close()

    def sink(self, collection: str) -> MilvusSink:
        """Return a sink on ``collection`` (404 if missing, ConfigError if not embedq's)."""
        with self._lock:
            sink = self._sinks.get(collection)
            if sink is None:
                sink = self._sinks[collection] = self._open(collection)
            return sink

    def forget(self, collection: str) -> None:
        """Drop a cached sink (after a failure), so the next search re-reads the collection."""
        with self._lock:
            self._sinks.pop(collection, None)

    def _connect(self) -> Any:
        if self._client is None:
            uri = self._settings.milvus_uri
            if is_lite_path(uri):
                self._client = connect_milvus(ensure_lite_server(uri), None)
            else:
                self._client = connect_milvus(uri, self._settings.milvus_token)
        return self._client

    def _open(self, collection: str) -> MilvusSink:
        client = self._connect()
        try:
            if not client.has_collection(collection):
                raise ApiError(
                    404,
                    f"collection {collection!r} does not exist in Milvus: fill it first with POST /v1/jobs "
                    "(documents and collection) or `embedq backfill`",
                    param="collection",
                    code="collection_not_found",
                )
            properties = client.describe_collection(collection).get("properties", {})
        except (MilvusException, grpc.RpcError, OSError) as exc:
            raise SinkUnavailableError(
                f"Milvus could not describe {collection!r}: {describe_error(exc)}"
            ) from exc
        try:
            record = json.loads(properties[MODEL_PROPERTY])
            model_id, dim = str(record["model_id"]), int(record["dim"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"collection {collection!r} was not filled by embedq (it records no model): search another"
            ) from None
        uri = self._settings.milvus_uri
        lite = is_lite_path(uri)
        return MilvusSink(
            client,
            collection,
            model_id,
            dim,
            server_kind="lite" if lite else None,
            write_lock=LiteWriteLock(uri) if lite else None,
        )


def _checked_search(body: dict[str, Any]) -> tuple[str, str, int, str, bool]:
    collection, query = body.get("collection"), body.get("query")
    if not isinstance(collection, str) or not collection:
        raise bad_request("'collection' is required: the Milvus collection to search", "collection")
    if not isinstance(query, str) or not query.strip():
        raise bad_request("'query' is required: a non-empty string", "query")
    top_k = body.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise bad_request(f"'top_k' must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}", "top_k")
    expression = body.get("filter") or ""
    if not isinstance(expression, str):
        raise bad_request(
            '\'filter\' must be a Milvus expression string, e.g. metadata["lang"] == "en"', "filter"
        )
    grouped = body.get("group_by_document", False)
    if not isinstance(grouped, bool):
        raise bad_request("'group_by_document' must be true or false", "group_by_document")
    return collection, query, top_k, expression, grouped


async def search(request: Request) -> Response:
    """Answer the ``top_k`` documents of ``collection`` nearest to ``query`` (optionally filtered).

    ``group_by_document``: the best passage of each document (collections filled with --split-tokens).
    """
    backend: Backend = request.app.state.backend
    config: GatewaySettings = request.app.state.config
    collections: Collections = request.app.state.collections
    body = await read_json(request, config.max_body_bytes)
    collection, query, top_k, expression, grouped = _checked_search(body)
    sink = await asyncio.to_thread(collections.sink, collection)
    model, _ = await backend.model_dim(sink.model_id)
    embedded = await backend.embed(model, [query], kind="query")
    try:
        hits = await asyncio.to_thread(
            sink.search, embedded.vectors[0], top_k, filter=expression, group_by_document=grouped
        )
    except SinkUnavailableError:
        collections.forget(collection)
        raise
    data = [{"object": "search.hit", **hit} for hit in hits]
    answer = {"object": "list", "collection": collection, "model": model, "data": data}
    return JSONResponse(answer, headers=timing_headers(embedded.enqueue_s, embedded.wait_s))


ROUTES = [Route("/v1/search", search, methods=["POST"])]

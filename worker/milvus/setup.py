"""Setting up an embedq collection: create it with its model record, check that record, index it.

The sink calls these before first use; each takes the client and a write guard (Milvus Lite's
write lock), so the sink keeps to reading and writing rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from producer.errors import ConfigError, ModelMismatchError
from worker.milvus.connection import is_transient
from worker.milvus.schema import (
    HNSW_PARAMS,
    ID_FIELD,
    METADATA_FIELD,
    METRIC,
    MODEL_PROPERTY,
    TEXT_FIELD,
    VECTOR_FIELD,
    collection_schema,
)

_CONCURRENT_CREATE_WAIT_S = 10.0  # how long to wait for a collection another client is creating


def create_collection(
    client: MilvusClient,
    collection: str,
    model_id: str,
    dim: int,
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> None:
    """Create ``collection`` for ``model_id`` vectors of ``dim``, recording both in a property."""
    schema = collection_schema(model_id, dim)
    record = json.dumps({"model_id": model_id, "dim": dim})
    try:
        with write_guard:
            client.create_collection(
                collection, schema=schema, properties={MODEL_PROPERTY: record}, timeout=timeout_s
            )
    except MilvusException:
        # Another process may be creating it between our check and our call: wait for that
        # creation to finish, then the collection is verified like any existing one. (Milvus Lite
        # refuses a second create while the first is still in progress, with "File exists".)
        deadline = time.monotonic() + min(timeout_s, _CONCURRENT_CREATE_WAIT_S)
        while not client.has_collection(collection, timeout=timeout_s):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def check_recorded_model(
    client: MilvusClient, collection: str, model_id: str, dim: int, *, timeout_s: float
) -> list[dict[str, Any]]:
    """Check that ``collection`` was made by embedq for ``model_id`` and ``dim``; return its fields."""
    description = client.describe_collection(collection, timeout=timeout_s)
    field_list = list(description.get("fields", []))
    fields = {field["name"]: field for field in field_list}
    try:
        record = json.loads(description.get("properties", {})[MODEL_PROPERTY])
        recorded_model, recorded_dim = str(record["model_id"]), int(record["dim"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"collection {collection!r} exists but was not created by embedq (it records no model): "
            "choose another collection name"
        ) from None
    schema_dim = int(fields.get(VECTOR_FIELD, {}).get("params", {}).get("dim", recorded_dim))
    if (recorded_model, recorded_dim) != (model_id, dim) or schema_dim != dim:
        raise ModelMismatchError(
            f"collection {collection!r} holds vectors of model {recorded_model!r} "
            f"(dim {schema_dim}), but this worker encodes with model {model_id!r} (dim {dim}): "
            f"use another collection name for {model_id!r}, or drop {collection!r} to "
            "re-embed everything with it"
        )
    missing = sorted({ID_FIELD, VECTOR_FIELD, TEXT_FIELD, METADATA_FIELD} - fields.keys())
    if missing:
        raise ConfigError(
            f"collection {collection!r} lacks the fields {missing}: choose another collection name"
        )
    return field_list


def ensure_vector_index(
    client: MilvusClient,
    collection: str,
    is_lite: Callable[[], bool],
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> None:
    """Create the vector index unless there is one (HNSW; AUTOINDEX on a Lite without faiss)."""

    def has_index() -> bool:
        return bool(client.list_indexes(collection, field_name=VECTOR_FIELD, timeout=timeout_s))

    if has_index():
        return
    # Milvus Lite builds HNSW only when faiss is installed; AUTOINDEX is its fallback.
    candidates: list[tuple[str, dict[str, int]]] = [("HNSW", HNSW_PARAMS)]
    if is_lite():
        candidates.append(("AUTOINDEX", {}))
    for attempt, (index_type, params) in enumerate(candidates, start=1):
        index_params = client.prepare_index_params()
        index_params.add_index(VECTOR_FIELD, index_type=index_type, metric_type=METRIC, params=params)
        try:
            with write_guard:
                client.create_index(collection, index_params, timeout=timeout_s)
            return
        except MilvusException as exc:
            if has_index():
                return  # another process created it first
            if is_transient(exc) or attempt == len(candidates):
                raise

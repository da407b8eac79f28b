"""Setting up an embedq collection: create it with its model record, check that record, index it.

The sink calls these before first use; each takes the client and a write guard (Milvus Lite's
write lock), so the sink keeps to reading and writing rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from producer.errors import ConfigError
from worker.milvus.connection import is_transient
from worker.milvus.model_record import ModelRecord, adopt, check_same_model, recorded_model
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
    model: ModelRecord,
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> None:
    """Create ``collection`` for ``model``'s vectors, recording the model (and a new collection uuid)."""
    schema = collection_schema(model.model_id, model.dim)
    record = ModelRecord.new(model.model_id, model.dim, model.fingerprint, model.revision).encode()
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
    client: MilvusClient,
    collection: str,
    ours: ModelRecord,
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> tuple[list[dict[str, Any]], ModelRecord]:
    """Check that ``collection`` was made by embedq for ``ours``; return its fields and its record.

    A collection made by an earlier version (no fingerprint or uuid) records them now ("adopted"),
    and is read back: if another worker adopted it at the same moment with other files, the record
    that stayed wins and this one is refused.
    """
    description = client.describe_collection(collection, timeout=timeout_s)
    field_list = list(description.get("fields", []))
    fields = {field["name"]: field for field in field_list}
    recorded = recorded_model(collection, description)
    schema_dim = int(fields.get(VECTOR_FIELD, {}).get("params", {}).get("dim", recorded.dim))
    check_same_model(collection, recorded, schema_dim, ours)
    if recorded.collection_uuid is None or (recorded.fingerprint is None and ours.fingerprint):
        with write_guard:
            adopt(client, collection, recorded, ours, timeout_s=timeout_s)
        recorded = recorded_model(collection, client.describe_collection(collection, timeout=timeout_s))
        check_same_model(collection, recorded, schema_dim, ours)
    missing = sorted({ID_FIELD, VECTOR_FIELD, TEXT_FIELD, METADATA_FIELD} - fields.keys())
    if missing:
        raise ConfigError(
            f"collection {collection!r} lacks the fields {missing}: choose another collection name"
        )
    return field_list, recorded


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

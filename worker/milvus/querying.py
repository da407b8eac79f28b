"""Search a collection by text, with the query embedded by the model the collection records.

A plain function for every front end (the CLI, the HTTP gateway, Python callers): it takes an
``embed(model_id, texts)`` callable, so this package stays free of the queue and the encoder.
The name is resolved to its physical collection first and the search goes to that collection,
so a search running while an alias moves (a reindex) uses one model's vectors from end to end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from producer.errors import (
    EmbedqError,
    InvalidInputError,
    ModelMismatchError,
    PermanentError,
)
from worker.milvus.catalog import collection_model
from worker.milvus.connection import milvus_errors
from worker.milvus.filters import check_filter
from worker.milvus.passages import grouped_search
from worker.milvus.schema import MAX_TOP_K, METADATA_FIELD, METRIC, SEARCHABLE_FIELDS, VECTOR_FIELD
from worker.milvus.search import SearchHit, search_hit

if TYPE_CHECKING:
    from pymilvus import MilvusClient

Embed = Callable[[str, Sequence[str]], np.ndarray]
"""(model id, texts) -> float32 vectors of shape (len(texts), dim), embedded as queries."""

_NOT_LOADED_CODE = 101


@dataclass(frozen=True)
class TextSearch:
    """What one search by text found, and in which physical collection with which model."""

    collection: str
    physical: str
    model_id: str
    hits: list[SearchHit]


def checked_output_fields(output_fields: Sequence[str]) -> list[str]:
    """Return the output fields as a list; each must be a field a hit can show."""
    unknown = sorted(set(output_fields) - set(SEARCHABLE_FIELDS))
    if unknown:
        raise InvalidInputError(f"unknown output fields {unknown}: choose from {list(SEARCHABLE_FIELDS)}")
    return list(output_fields)


def search_text(
    client: MilvusClient,
    collection: str,
    query: str,
    embed: Embed,
    *,
    top_k: int = 10,
    filter_expr: str = "",
    output_fields: Sequence[str] = SEARCHABLE_FIELDS,
    consistency_level: str = "Bounded",
    timeout_s: float = 30.0,
    group_by_document: bool = False,
) -> TextSearch:
    """Embed ``query`` with the model ``collection`` records and return its ``top_k`` nearest rows.

    ``filter_expr`` (a Milvus boolean expression) is checked before anything is sent. If the
    physical collection disappears between resolving the name and searching (a reindex with
    ``--drop-old`` just moved the alias), the name is resolved once more and the search repeated.
    ``group_by_document``: the best passage of each of the ``top_k`` nearest documents.
    """
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("the search query is empty: give the text to search for")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInputError(f"top_k must be an int from 1 to {MAX_TOP_K}, got {top_k!r}")
    expression = check_filter(filter_expr) if filter_expr.strip() else ""
    fields = checked_output_fields(output_fields)
    asked = sorted({*fields, METADATA_FIELD}) if group_by_document else fields
    for attempt in (1, 2):
        with _search_errors(collection):
            physical, model_id, dim = collection_model(client, collection, timeout_s=timeout_s)
        vector = np.asarray(embed(model_id, [query]), dtype=np.float32)
        if vector.shape != (1, dim):
            raise ModelMismatchError(
                f"the query was embedded to shape {vector.shape}, but collection {collection!r} holds "
                f"{dim}-dimensional vectors of model {model_id!r}: serve that model"
            )

        def run(
            limit: int, physical: str = physical, query_vector: np.ndarray = vector[0]
        ) -> list[dict[str, Any]]:
            return _search(
                client, physical, query_vector, limit, expression, asked, consistency_level, timeout_s
            )

        try:
            with _search_errors(collection):
                if group_by_document:
                    hits = [search_hit(raw, fields, document=doc) for doc, raw in grouped_search(run, top_k)]
                else:
                    hits = [search_hit(raw, fields) for raw in run(top_k)]
        except PermanentError:
            if attempt == 2 or _still(client, collection, physical, timeout_s):
                raise
            continue
        return TextSearch(collection, physical, model_id, hits)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _search(
    client: MilvusClient,
    physical: str,
    vector: np.ndarray,
    top_k: int,
    expression: str,
    fields: list[str],
    consistency_level: str,
    timeout_s: float,
) -> list[dict[str, Any]]:
    from pymilvus.exceptions import MilvusException

    def call() -> list[dict[str, Any]]:
        results = client.search(
            physical,
            data=[vector.tolist()],
            anns_field=VECTOR_FIELD,
            limit=top_k,
            filter=expression,
            output_fields=fields,
            search_params={"metric_type": METRIC, "params": {"ef": max(64, top_k)}},
            consistency_level=consistency_level,
            timeout=timeout_s,
        )
        return list(results[0])

    # A collection is released by a server restart or a rename: load it first rather than let the
    # search fail (pymilvus logs every failed call with a traceback, even one that is retried).
    if _released(client, physical, timeout_s):
        client.load_collection(physical, timeout=timeout_s)
    try:
        return call()
    except MilvusException as exc:
        if exc.code != _NOT_LOADED_CODE:
            raise
    client.load_collection(physical, timeout=timeout_s)  # released between the check and the search
    return call()


def _released(client: MilvusClient, physical: str, timeout_s: float) -> bool:
    """Return whether ``physical`` exists but is not loaded (a failed check counts as loaded)."""
    from pymilvus.client.types import LoadState
    from pymilvus.exceptions import MilvusException

    try:
        state = client.get_load_state(physical, timeout=timeout_s).get("state")
    except MilvusException:
        return False
    return state in (LoadState.NotLoad, LoadState.Loading)


def _still(client: MilvusClient, collection: str, physical: str, timeout_s: float) -> bool:
    """Return whether ``collection`` still resolves to ``physical`` (else the search is worth repeating)."""
    try:
        return collection_model(client, collection, timeout_s=timeout_s)[0] == physical
    except EmbedqError:
        return True


def _search_errors(collection: str) -> contextlib.AbstractContextManager[None]:
    return milvus_errors(f"search {collection!r}", unavailable_hint="check that it is running, then retry")

"""Search results as the sink returns them."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from worker.milvus.content import visible_metadata
from worker.milvus.schema import METADATA_FIELD, TEXT_FIELD


class SearchHit(TypedDict):
    """One search result: the document id, its cosine similarity, and the fields asked for."""

    id: str
    score: float
    text: NotRequired[str]
    metadata: NotRequired[dict[str, Any]]
    document: NotRequired[str]
    """The document the hit belongs to (its ``_parent`` for a passage), when grouped by document."""


def search_hit(raw: dict[str, Any], fields: list[str], *, document: str | None = None) -> SearchHit:
    """Turn one raw pymilvus search result into a SearchHit with the fields asked for."""
    entity = raw.get("entity", {})
    hit = SearchHit(id=str(raw["id"]), score=float(raw["distance"]))
    if document is not None:
        hit["document"] = document
    if TEXT_FIELD in fields:
        hit["text"] = str(entity.get(TEXT_FIELD, ""))
    if METADATA_FIELD in fields:
        hit["metadata"] = dict(visible_metadata(entity.get(METADATA_FIELD) or {}))
    return hit

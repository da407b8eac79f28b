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


def search_hit(raw: dict[str, Any], fields: list[str]) -> SearchHit:
    """Turn one raw pymilvus search result into a SearchHit with the fields asked for."""
    entity = raw.get("entity", {})
    hit = SearchHit(id=str(raw["id"]), score=float(raw["distance"]))
    if TEXT_FIELD in fields:
        hit["text"] = str(entity.get(TEXT_FIELD, ""))
    if METADATA_FIELD in fields:
        hit["metadata"] = dict(visible_metadata(entity.get(METADATA_FIELD) or {}))
    return hit

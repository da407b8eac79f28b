"""The content hash every embedq row records, so an unchanged document is never encoded twice.

No pymilvus here: the worker's tasks import it before any Milvus connection is needed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_KEY = "_embedq_hash"
"""Metadata key holding a row's content hash (hidden from search hits)."""
RESERVED_METADATA_KEYS = frozenset({HASH_KEY})


def content_hash(model_id: str, text: str, metadata: dict[str, Any]) -> str:
    """Return the hash a row records: model, text and metadata (without reserved keys), hex."""
    visible = {key: value for key, value in metadata.items() if key not in RESERVED_METADATA_KEYS}
    digest = hashlib.sha256()
    for part in (model_id, text, json.dumps(visible, sort_keys=True, ensure_ascii=False, allow_nan=False)):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:32]


def with_hash(metadata: dict[str, Any], hash_hex: str) -> dict[str, Any]:
    """Return ``metadata`` with its content hash recorded."""
    return {**metadata, HASH_KEY: hash_hex}


def visible_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return ``metadata`` without embedq's reserved keys."""
    if not RESERVED_METADATA_KEYS.intersection(metadata):
        return metadata
    return {key: value for key, value in metadata.items() if key not in RESERVED_METADATA_KEYS}

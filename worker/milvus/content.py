"""The content hash every embedq row records, so an unchanged document is never encoded twice.

No pymilvus here: the worker's tasks import it before any Milvus connection is needed. The hash
itself is part of the protocol (``producer.protocol.content``): sync producers compute it too.
"""

from __future__ import annotations

from typing import Any

from producer.protocol.content import HASH_KEY, RESERVED_METADATA_KEYS, content_hash

__all__ = ["HASH_KEY", "RESERVED_METADATA_KEYS", "content_hash", "visible_metadata", "with_hash"]


def with_hash(metadata: dict[str, Any], hash_hex: str) -> dict[str, Any]:
    """Return ``metadata`` with its content hash recorded."""
    return {**metadata, HASH_KEY: hash_hex}


def visible_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return ``metadata`` without embedq's reserved keys."""
    if not RESERVED_METADATA_KEYS.intersection(metadata):
        return metadata
    return {key: value for key, value in metadata.items() if key not in RESERVED_METADATA_KEYS}

"""The content hash every embedq row records: model, text and metadata (no imports beyond hashlib).

Workers record it with each row; a sync producer computes the same value locally, so a document
whose hash a sync manifest already holds is neither sent, encoded nor written.
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
    if metadata:
        visible = {key: value for key, value in metadata.items() if key not in RESERVED_METADATA_KEYS}
        meta_json = json.dumps(visible, sort_keys=True, ensure_ascii=False, allow_nan=False)
    else:
        meta_json = "{}"  # what json.dumps({}) gives, without its cost on every plain document
    digest = hashlib.sha256()
    for part in (model_id, text, meta_json):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:32]

"""A document as producers send it for upserting: id, text and JSON-safe metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One document to embed and store: id, text and JSON-safe metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

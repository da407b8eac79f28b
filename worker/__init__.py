"""embedq worker side: the static encoder, the Celery worker app and the Milvus sink."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.encoder import StaticEncoder
    from worker.loader import BUNDLED_MODEL_ID

__all__ = ["BUNDLED_MODEL_ID", "StaticEncoder"]


def __getattr__(name: str) -> Any:
    """Import the model stack on first use: `embedq` must also run where only the producer is installed."""
    if name == "StaticEncoder":
        from worker.encoder import StaticEncoder

        return StaticEncoder
    if name == "BUNDLED_MODEL_ID":
        from worker.loader import BUNDLED_MODEL_ID

        return BUNDLED_MODEL_ID
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

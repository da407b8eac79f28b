"""embedq worker side: the static encoder, the Celery worker, the Milvus sink, the local run and the CLI.

The public names are imported on first use: `embedq` (worker.cli) must also run where only the
producer is installed, without the model stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.encoding import BUNDLED_MODEL_ID, StaticEncoder

_HOME: dict[str, str] = {"StaticEncoder": "worker.encoding", "BUNDLED_MODEL_ID": "worker.encoding"}

__all__ = ["BUNDLED_MODEL_ID", "StaticEncoder"]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)

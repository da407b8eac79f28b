"""embedq worker side: the static encoder, the Celery worker app and the Milvus sink."""

from worker.encoder import StaticEncoder
from worker.loader import BUNDLED_MODEL_ID

__all__ = ["BUNDLED_MODEL_ID", "StaticEncoder"]

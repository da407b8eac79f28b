"""The static encoder: model files in, tokenize, pool and normalise; never imports Celery or pymilvus."""

from worker.encoding.encoder import StaticEncoder
from worker.encoding.loader import BUNDLED_MODEL_ID, ModelFiles, load_model_files

__all__ = ["BUNDLED_MODEL_ID", "ModelFiles", "StaticEncoder", "load_model_files"]

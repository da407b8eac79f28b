"""Model2VecEmbeddingFunction: pymilvus' embedding-function call shape, served by embedq workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from producer.client import EmbeddingClient


class Model2VecEmbeddingFunction:
    """Drop-in for pymilvus' Model2VecEmbeddingFunction that encodes on the workers instead of in-process.

    ``model_source`` names the model the workers serve (None: the bundled default model).
    """

    def __init__(
        self,
        model_source: str | os.PathLike[str] | None = None,
        broker_url: str | None = None,
        result_backend: str | None = None,
        *,
        client: EmbeddingClient | None = None,
        timeout_s: float | None = 60.0,
        **client_options: Any,
    ) -> None:
        if client is None:
            model = None if model_source is None else os.fspath(model_source)
            client = EmbeddingClient(broker_url, result_backend, model, **client_options)
            self._owns_client = True
        else:
            self._owns_client = False
        self.model_source = client.model
        self.client = client
        self.timeout_s = timeout_s
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """The vector dimension, as the live workers report it (asked once, then remembered)."""
        if self._dim is None:
            self._dim = self.client.model_dim()
        return self._dim

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        """Return one 1-D float32 vector per document."""
        if isinstance(documents, list | tuple) and not documents:
            return []
        return list(self.client.embed_documents(documents).result(timeout_s=self.timeout_s))

    def encode_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Return one 1-D float32 vector per query."""
        if isinstance(queries, list | tuple) and not queries:
            return []
        return list(self.client.embed_queries(queries).result(timeout_s=self.timeout_s))

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode ``texts`` as documents, like pymilvus' embedding functions."""
        return self.encode_documents(texts)

    def close(self) -> None:
        """Close the client this function created."""
        if self._owns_client:
            self.client.close()

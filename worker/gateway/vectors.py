"""Vector shaping for the HTTP answers: first-N dimensions renormalised, L2 normalisation, base64."""

from __future__ import annotations

import base64
import math

import numpy as np

_UNIT_TOLERANCE = 1e-5


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Return ``vectors`` with unit-length rows; rows already of unit length (or zero) are left as they are.

    Leaving unit rows alone keeps the workers' bytes exact for models that normalise already.
    """
    if len(vectors) == 1:  # the usual query: one dot product instead of four array operations
        norm = math.sqrt(float(np.dot(vectors[0], vectors[0])))
        if norm == 0.0 or abs(norm - 1.0) <= _UNIT_TOLERANCE:
            return vectors
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    off = (norms > 0) & (np.abs(norms - 1.0) > _UNIT_TOLERANCE)
    if not off.any():
        return vectors
    out = np.array(vectors, dtype=np.float32)
    out[off] /= norms[off, None]
    return out


def first_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Return the first ``dimensions`` components of each row, renormalised to unit length."""
    cut = np.array(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    np.divide(cut, norms, out=cut, where=norms > 0)
    return cut


def base64_float32(vector: np.ndarray) -> str:
    """Return one vector as base64 of its little-endian float32 bytes (OpenAI's ``base64`` format)."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")

"""Pure numpy pooling of token ids into sentence vectors: the arithmetic of a static model.

Token ids of a batch travel as one flat array plus a per-text length array. Summing the token
vectors of every text is one sparse (texts x vocabulary) by dense (vocabulary x dim) product,
which reads each needed table row in place instead of materialising a (tokens x dim) copy.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

# model2vec divides by (norm + 1e-32); kept so that zero vectors stay zero and results match it.
NORM_EPSILON = 1e-32
# Up to this many texts, gathering token rows beats setting up a sparse product (single queries).
SMALL_BATCH_TEXTS = 8


def flat_starts(lengths: np.ndarray) -> np.ndarray:
    """Offsets of each text's first token in the flat id array, plus the total at the end."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def select_tokens(
    ids: np.ndarray, lengths: np.ndarray, max_length: int | None, drop_id: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each text's first ``max_length`` tokens, then drop every ``drop_id`` (the unknown token)."""
    keep: np.ndarray | None = None
    if max_length is not None and len(lengths) and int(lengths.max()) > max_length:
        offsets = flat_starts(lengths)
        position = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
        keep = position < max_length
    if drop_id is not None:
        not_dropped = ids != drop_id
        if not not_dropped.all():
            keep = not_dropped if keep is None else keep & not_dropped
    if keep is None:
        return ids, lengths
    text_of_token = np.repeat(np.arange(len(lengths)), lengths)
    return ids[keep], np.bincount(text_of_token[keep], minlength=len(lengths))


def _sum_small(
    rows: np.ndarray, lengths: np.ndarray, table: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """Per-text sums by gathering rows: cheaper than building a sparse matrix for a few texts."""
    gathered = table[rows]
    if weights is not None:
        gathered *= weights[:, None]
    sums = np.zeros((len(lengths), table.shape[1]), dtype=np.float32)
    offsets = flat_starts(lengths)
    for text, length in enumerate(lengths):
        if length:
            sums[text] = gathered[offsets[text] : offsets[text + 1]].sum(axis=0)
    return sums


def mean_pool(
    ids: np.ndarray,
    lengths: np.ndarray,
    table: np.ndarray,
    *,
    token_weights: np.ndarray | None = None,
    mapping: np.ndarray | None = None,
    exact_integer_table: bool = False,
) -> np.ndarray:
    """Mean of ``table[mapping[id]] * token_weights[id]`` over each text's tokens; float32 (texts, dim).

    A text without tokens gets a zero vector. With ``exact_integer_table`` (an int8 table widened
    to float32 and no weights) the integer sums are exact and the division runs in float64, as
    numpy's mean of an integer array does.
    """
    rows = mapping[ids] if mapping is not None else ids
    weights = token_weights[ids] if token_weights is not None else None
    if len(lengths) <= SMALL_BATCH_TEXTS:
        sums = _sum_small(rows, lengths, table, weights)
    else:
        data = weights if weights is not None else np.ones(len(ids), dtype=np.float32)
        counts = scipy.sparse.csr_array(
            (data, rows, flat_starts(lengths)), shape=(len(lengths), table.shape[0])
        )
        sums = np.asarray(counts @ table, dtype=np.float32)
    divisor = np.maximum(lengths, 1)[:, None]
    if exact_integer_table:
        exact: np.ndarray = (sums.astype(np.float64) / divisor).astype(np.float32)
        return exact
    sums /= divisor.astype(np.float32)
    return sums


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit L2 norm in float32, in place; zero rows stay zero."""
    # Row norms as a dot product of each row with itself: one pass, no (texts, dim) temporary.
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    norms += np.float32(NORM_EPSILON)
    vectors /= norms
    return vectors

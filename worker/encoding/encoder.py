"""StaticEncoder: a Model2Vec static model, encoding texts exactly as ``model2vec`` 0.10.0 does.

The rules (each from ``model2vec.StaticModel.encode``): cut every text to ``max_length *
median token length`` characters, tokenize without special tokens, keep the first ``max_length``
tokens, drop the unknown token, mean-pool ``table[mapping[id]] * weights[id]``, then optionally
L2-normalise. Output is always float32.

Speed: the tokenizer's own thread pool tokenizes batch k+1 while batch k is pooled, and pooling
is one sparse product (see :mod:`worker.encoding.pooling`), so an encode costs little more than tokenizing.
Texts repeated within one call are tokenized and pooled once, and BERT-style tokenizers skip
their normaliser on plain ASCII text (see :mod:`worker.encoding.tokenizing`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
from tokenizers import Encoding, Tokenizer

from producer.errors import InvalidInputError, ModelLoadError
from worker.encoding.fast_tokenizing import FAST_TOKENIZER_NAME, FastTokenizer, select_fast_tokenizer
from worker.encoding.loader import ModelFiles, load_model_files
from worker.encoding.pooling import mean_pool, normalize_rows, select_tokens
from worker.encoding.splitting import SplitSpec, split_texts
from worker.encoding.tokenizing import TextTokenizer

DEFAULT_MAX_LENGTH: Final = 512
DEFAULT_BATCH_SIZE: Final = 1024
"""Texts per tokenizer call: bench_encoder's ours/ours-4096 (quiet, 2026-12-02) was 1.11x on the
bundled model and 1.35x on its float32 copy (0.83x on the int8 one): smaller calls overlap better."""
_TOKENIZE_AHEAD: Final = 2  # batches handed to the tokenizer ahead of the one being pooled


class _Unset:
    """Marks an argument left out, where ``None`` has a meaning of its own (no truncation)."""


UNSET: Final = _Unset()


def _unk_token_id(tokenizer: Tokenizer) -> int | None:
    """Return the id model2vec drops from every text (the unk token, or a Unigram unk_id)."""
    unk_token = getattr(tokenizer.model, "unk_token", None)
    if unk_token is not None:
        return tokenizer.token_to_id(unk_token)
    if hasattr(tokenizer.model, "unk_token"):
        return None
    import json

    unk_id = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return int(unk_id) if unk_id is not None else None


def _median_token_length(tokenizer: Tokenizer) -> int:
    return int(np.median([len(token) for token in tokenizer.get_vocab()]))


def _checked_max_length(value: object, source_dir: Path) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ModelLoadError(
        f"{source_dir}/config.json: max_length must be a positive number of tokens or null, got {value!r}"
    )


def _check_values(
    table: np.ndarray, weights: np.ndarray | None, mapping: np.ndarray | None, source: Path
) -> None:
    """Refuse at load what would serve NaN or wrong vectors on every request instead."""
    if not np.isfinite(table).all():
        raise ModelLoadError(
            f"{source}: the embedding table holds NaN or infinite values; the file is corrupt"
        )
    if weights is not None and not np.isfinite(weights).all():
        raise ModelLoadError(
            f"{source}: the 'weights' tensor holds NaN or infinite values; the file is corrupt"
        )
    if mapping is not None and len(mapping) and (int(mapping.min()) < 0 or int(mapping.max()) >= len(table)):
        raise ModelLoadError(
            f"{source}: 'mapping' points outside the {len(table)}-row table "
            f"(values {int(mapping.min())}..{int(mapping.max())}); the model files do not belong together"
        )


def _check_texts(texts: object) -> Sequence[str]:
    """Accept a list or tuple of str; otherwise raise one error naming the offending item."""
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidInputError(
            f"texts must be a list of str, got {type(texts).__name__}"
            + ("; wrap a single text in a list: [text]" if isinstance(texts, str) else "")
        )
    for index, text in enumerate(texts):
        if type(text) is not str:
            raise InvalidInputError(f"texts[{index}] must be str, got {type(text).__name__}")
    return texts


def _find_unencodable(texts: Sequence[str]) -> InvalidInputError:
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return InvalidInputError(
                f"texts[{index}] is not valid Unicode ({exc.reason} at character {exc.start}); "
                "decode your bytes with errors='replace' or drop lone surrogates"
            )
    return InvalidInputError("the tokenizer rejected the batch; check that every text is a valid str")


class StaticEncoder:
    """A loaded Model2Vec static model: ``encode(texts) -> float32 (n, dim)``."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        normalize: bool | None = None,
        max_length: int | _Unset | None = UNSET,
        tokenizer: str = "auto",
    ) -> None:
        config = files.config
        self.model_id: str = files.model_id
        self.fingerprint: str = files.fingerprint
        self.revision: str | None = files.revision
        self.source_dir: Path = files.source_dir
        self.normalize: bool = bool(config.get("normalize", False)) if normalize is None else normalize
        self.max_length: int | None = _checked_max_length(
            config.get("max_length", DEFAULT_MAX_LENGTH) if isinstance(max_length, _Unset) else max_length,
            files.source_dir,
        )
        table = files.embeddings
        self._integer_table = table.dtype.kind in "iu"
        # float16/int8 widen exactly to float32; the widened table is built before a worker forks,
        # so the pool processes share its pages.
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self._weights = None if files.weights is None else np.asarray(files.weights, dtype=np.float32)
        self._mapping = None if files.mapping is None else np.asarray(files.mapping, dtype=np.intp)
        self._tokenizer = Tokenizer.from_str(files.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # truncation to max_length tokens is done on the ids
        self._text_tokenizer = TextTokenizer(self._tokenizer)
        self._unk_id = _unk_token_id(self._tokenizer)
        self._median_token_length = _median_token_length(self._tokenizer)
        # tokie where the load-time probe shows it gives the same ids (see worker.fast_tokenizing).
        self._fast_tokenizer: FastTokenizer | None = select_fast_tokenizer(
            tokenizer,
            self._tokenizer,
            None if self.max_length is None else self.max_length * self._median_token_length,
            self.model_id,
        )
        vocab_size = self._tokenizer.get_vocab_size()
        rows_needed = vocab_size if self._mapping is None else len(self._mapping)
        if self._mapping is None and len(self._table) < vocab_size:
            raise ModelLoadError(
                f"{self.source_dir}: table has {len(self._table)} rows for a vocabulary of {vocab_size} "
                "tokens and no 'mapping' tensor; the model files do not belong together"
            )
        if self._weights is not None and len(self._weights) < rows_needed:
            raise ModelLoadError(f"{self.source_dir}: 'weights' has fewer entries than the vocabulary")
        _check_values(self._table, self._weights, self._mapping, self.source_dir)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        normalize: bool | None = None,
        max_length: int | _Unset | None = UNSET,
        tokenizer: str = "auto",
    ) -> StaticEncoder:
        """Load ``source``: ``None`` for the bundled model, a local folder, or a Hugging Face Hub id.

        ``tokenizer``: ``auto`` (tokie where its ids are checked equal, else tokenizers), ``fast``
        (tokie or refuse to load) or ``tokenizers``.
        """
        files = load_model_files(source, revision=revision, cache_dir=cache_dir, token=token)
        return cls(files, normalize=normalize, max_length=max_length, tokenizer=tokenizer)

    @property
    def dim(self) -> int:
        """Length of every output vector."""
        return int(self._table.shape[1])

    @property
    def tokenizer_name(self) -> str:
        """Which library tokenizes: ``tokie`` (checked against the model's tokenizer) or ``tokenizers``."""
        return "tokenizers" if self._fast_tokenizer is None else FAST_TOKENIZER_NAME

    @property
    def table_nbytes(self) -> int:
        """Bytes held by the widened table (shared between forked pool processes)."""
        return int(self._table.nbytes)

    def __repr__(self) -> str:
        return f"StaticEncoder(model_id={self.model_id!r}, dim={self.dim}, normalize={self.normalize})"

    def _run_tokenizer(
        self, texts: Sequence[str], max_length: int | None
    ) -> list[Encoding] | tuple[np.ndarray, np.ndarray]:
        if max_length is not None:
            limit = max_length * self._median_token_length
            texts = [text[:limit] for text in texts]
        try:
            if self._fast_tokenizer is not None:
                return self._fast_tokenizer.encode_flat(texts)
            return self._text_tokenizer.encode_batch(texts)
        except (TypeError, UnicodeEncodeError) as exc:
            raise _find_unencodable(texts) from exc

    def _token_ids(
        self, encodings: list[Encoding] | tuple[np.ndarray, np.ndarray], max_length: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(encodings, tuple):  # the fast tokenizer's flat arrays
            return select_tokens(*encodings, max_length, self._unk_id)
        # One flat list grown in place, then one conversion: cheaper than a list per text chained
        # through np.fromiter (reading ``.ids`` is most of the Python work per text).
        flat: list[int] = []
        extend = flat.extend
        for encoding in encodings:
            extend(encoding.ids)
        ids = np.array(flat, dtype=np.intp)
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        return select_tokens(ids, lengths, max_length, self._unk_id)

    def tokenize(self, texts: Sequence[str], max_length: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` as (flat ids, per-text lengths), after truncation and unk removal."""
        return self._token_ids(self._run_tokenizer(_check_texts(texts), max_length), max_length)

    def _pool(self, ids: np.ndarray, lengths: np.ndarray, normalize: bool) -> np.ndarray:
        vectors = mean_pool(
            ids,
            lengths,
            self._table,
            token_weights=self._weights,
            mapping=self._mapping,
            exact_integer_table=self._integer_table and self._weights is None,
        )
        return normalize_rows(vectors) if normalize else vectors

    def encode(
        self,
        texts: Sequence[str],
        *,
        max_length: int | _Unset | None = UNSET,
        normalize: bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        **_ignored: Any,
    ) -> np.ndarray:
        """Encode texts into a float32 array of shape (len(texts), dim).

        ``max_length`` (tokens; ``None`` for no limit) and ``normalize`` default to the model's
        config; ``batch_size`` is the number of texts tokenized per call.
        """
        texts = _check_texts(texts)
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        limit = self.max_length if isinstance(max_length, _Unset) else max_length
        do_normalize = self.normalize if normalize is None else normalize
        # Equal texts get equal vectors: each distinct text is tokenized and pooled once.
        first_seen: dict[str, int] = {}
        order = [first_seen.setdefault(text, len(first_seen)) for text in texts]
        if len(first_seen) == len(texts):
            return self._encode_distinct(texts, limit, do_normalize, batch_size)
        try:
            distinct = self._encode_distinct(list(first_seen), limit, do_normalize, batch_size)
        except InvalidInputError:
            raise _find_unencodable(texts) from None  # name the item by its place in ``texts``
        return distinct[np.array(order, dtype=np.intp)]

    def encode_with_token_counts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode like ``encode(texts)`` with the model's defaults; also return the tokens pooled per text.

        The counts are after truncation and unknown-token removal: what a usage report should bill.
        """
        vectors, counts, _ = self.encode_with_truncation(texts)
        return vectors, counts

    def encode_with_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``encode_with_token_counts``, plus whether each text was cut at ``max_length`` (bool array).

        A text counts as cut when it held more than ``max_length`` tokens, or more characters than
        the ``max_length * median token length`` read before tokenizing (model2vec's first cut).
        """
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        limit = self.max_length
        for start in range(0, len(texts), DEFAULT_BATCH_SIZE):
            batch = texts[start : start + DEFAULT_BATCH_SIZE]
            encodings = self._run_tokenizer(batch, limit)
            if limit is not None:
                raw = np.asarray(
                    encodings[1]
                    if isinstance(encodings, tuple)
                    else [len(encoding) for encoding in encodings]
                )
                chars = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
                truncated[start : start + len(batch)] = (raw > limit) | (
                    chars > limit * self._median_token_length
                )
            ids, lengths = self._token_ids(encodings, limit)
            out[start : start + len(batch)] = self._pool(ids, lengths, self.normalize)
            counts[start : start + len(batch)] = lengths
        return out, counts, truncated

    def split(self, texts: Sequence[str], spec: SplitSpec) -> list[list[str]]:
        """Return each text's passages of at most ``spec.max_tokens`` tokens of this model's tokenizer.

        ``spec.max_tokens`` above the model's ``max_length`` is refused: such passages would be cut.
        """
        if self.max_length is not None and spec.max_tokens > self.max_length:
            raise InvalidInputError(
                f"--split-tokens {spec.max_tokens} is more than model {self.model_id!r} reads "
                f"(max_length {self.max_length} tokens): use --split-tokens {self.max_length} or less"
            )
        texts = _check_texts(texts)
        encodings = self._run_tokenizer(texts, None)
        counts = encodings[1].tolist() if isinstance(encodings, tuple) else [len(e) for e in encodings]
        return split_texts(
            lambda long: self._text_tokenizer.encode_batch(long, offsets=True), texts, spec, counts
        )

    def _encode_distinct(
        self, texts: Sequence[str], limit: int | None, do_normalize: bool, batch_size: int
    ) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if len(starts) <= 1:
            if texts:
                out[:] = self._pool(*self._token_ids(self._run_tokenizer(texts, limit), limit), do_normalize)
            return out
        # The tokenizer releases the GIL and runs on all cores: two batches are kept in its hands on
        # helper threads, so it always has work while this thread reads the ids of the current
        # batch and pools them (closer to the bare tokenizer than one batch ahead, in bench_encoder).
        batches = [texts[start : start + batch_size] for start in starts]
        with ThreadPoolExecutor(max_workers=_TOKENIZE_AHEAD, thread_name_prefix="embedq-tokenize") as pool:
            pending = deque(
                pool.submit(self._run_tokenizer, batch, limit) for batch in batches[:_TOKENIZE_AHEAD]
            )
            for index, start in enumerate(starts):
                encodings = pending.popleft().result()
                following = index + _TOKENIZE_AHEAD
                if following < len(batches):
                    pending.append(pool.submit(self._run_tokenizer, batches[following], limit))
                ids, lengths = self._token_ids(encodings, limit)
                out[start : start + len(lengths)] = self._pool(ids, lengths, do_normalize)
        return out

r"""The model's tokenizer, with the BERT normaliser's work on plain ASCII text done in Python first.

BERT-style tokenizers (those of all-MiniLM-L6-v2, bert-base-uncased and the potion models) start
with ``BertNormalizer``: clean control characters, isolate CJK characters, strip accents (Unicode
NFD), lowercase. In ``tokenizers`` that step tracks the alignment of every byte and costs about a
third of the whole tokenization. On ASCII text without control characters it reduces to
lowercasing, which Python does in a fraction of a microsecond: such texts are lowercased here and
tokenized by a copy of the tokenizer without normaliser. Everything else goes through the model's
own tokenizer. Token ids are the same either way (``tests/test_tokenizing.py`` checks it against
the full tokenizer on generated and real text).

Why the conditions, rule by rule, for an ASCII text:
- CJK isolation and accent stripping change nothing (no CJK characters, no combining marks, and
  NFD leaves ASCII as it is);
- cleaning maps ``\t \n \r`` to a space, which the BERT pre-tokenizer splits on just the same
  (so the ASCII path is taken only with ``BertPreTokenizer``), and drops the other control
  characters: texts holding one take the full path;
- added tokens (``[CLS]``, ``[MASK]``...) are matched before normalisation: texts holding one, in
  any letter case, take the full path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from tokenizers import Encoding, Tokenizer

_ASCII_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


class TextTokenizer:
    """``encode_batch(texts)``: the model tokenizer's encodings, without special tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._full = tokenizer
        self._plain: Tokenizer | None = None
        self._lowercase = False
        self._full_path_only = re.compile(_ASCII_CONTROL)
        config = json.loads(tokenizer.to_str())
        normalizer, pre_tokenizer = config.get("normalizer"), config.get("pre_tokenizer")
        if (
            isinstance(normalizer, dict)
            and normalizer.get("type") == "BertNormalizer"
            and isinstance(pre_tokenizer, dict)
            and pre_tokenizer.get("type") == "BertPreTokenizer"
        ):
            plain = Tokenizer.from_str(tokenizer.to_str())
            try:
                plain.normalizer = None
            except (TypeError, ValueError):  # a tokenizers release that cannot drop it: full path only
                return
            plain.no_padding()
            plain.no_truncation()
            self._plain = plain
            self._lowercase = bool(normalizer.get("lowercase", True))
            added = [re.escape(token["content"]) for token in config.get("added_tokens", [])]
            added = [pattern for pattern in added if pattern]
            self._full_path_only = re.compile("|".join([_ASCII_CONTROL, *added]), re.IGNORECASE)

    @property
    def has_ascii_path(self) -> bool:
        """Whether plain ASCII texts skip the tokenizer's normaliser (BERT-style tokenizers)."""
        return self._plain is not None

    def encode_batch(self, texts: Sequence[str], *, offsets: bool = False) -> list[Encoding]:
        """Tokenize ``texts`` (no special tokens added), in order; raises TypeError on a non-str.

        With ``offsets``, each encoding also holds its tokens' character offsets into the text
        (lowercasing ASCII keeps every character where it was, so the ASCII path's offsets hold too).
        """
        if self._plain is None:
            if offsets:
                return self._full.encode_batch(list(texts), add_special_tokens=False)
            return self._full.encode_batch_fast(texts, add_special_tokens=False)
        if offsets:
            return self._encode_ascii_first(texts, self._plain.encode_batch, self._full.encode_batch)
        return self._encode_ascii_first(texts, self._plain.encode_batch_fast, self._full.encode_batch_fast)

    def _encode_ascii_first(self, texts: Sequence[str], plain_batch: Any, full_batch: Any) -> list[Encoding]:
        needs_full = self._full_path_only.search
        lowercase = self._lowercase
        prepared: list[str] = []
        full_path: list[int] = []
        for index, text in enumerate(texts):
            if text.isascii() and needs_full(text) is None:
                prepared.append(text.lower() if lowercase else text)
            else:
                full_path.append(index)
                prepared.append("")
        encodings: list[Encoding] = plain_batch(prepared, add_special_tokens=False)
        if full_path:
            others = full_batch([texts[i] for i in full_path], add_special_tokens=False)
            for index, encoding in zip(full_path, others, strict=True):
                encodings[index] = encoding
        return encodings

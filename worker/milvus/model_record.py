"""The model record an embedq collection carries: which model wrote it, and which collection it is.

Stored as JSON in the collection property ``embedq.model``::

    {"model_id": "./m", "dim": 256, "fingerprint": "<blake2b hex>", "revision": null,
     "collection_uuid": "<uuid4 hex>"}

``model_id`` and ``dim`` are what every embedq version records. ``fingerprint`` (a hash of the
model's files) tells two models under one name apart; ``collection_uuid`` tells a dropped and
recreated collection from the one a backfill's saved progress was written to. Collections made by
an earlier version lack both: the first sink that opens one records them ("adopts" it).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from pymilvus import MilvusClient

from producer.errors import ConfigError, ModelMismatchError
from producer.protocol.names import short_fingerprint
from worker.milvus.schema import MODEL_PROPERTY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRecord:
    """What a collection records about the model that wrote it, and its own identity."""

    model_id: str
    dim: int
    fingerprint: str | None = None
    revision: str | None = None
    collection_uuid: str | None = None

    @classmethod
    def new(cls, model_id: str, dim: int, fingerprint: str | None, revision: str | None) -> ModelRecord:
        """Return the record of a collection created now (with a new collection uuid)."""
        return cls(model_id, dim, fingerprint, revision, uuid.uuid4().hex)

    def encode(self) -> str:
        """Return the JSON stored in the collection property."""
        return json.dumps({key: value for key, value in asdict(self).items() if value is not None})

    @classmethod
    def decode(cls, raw: str) -> ModelRecord:
        """Rebuild a record; raise KeyError, TypeError or ValueError when it is not one."""
        record: Any = json.loads(raw)
        fingerprint, revision, collection_uuid = (
            record.get(key) for key in ("fingerprint", "revision", "collection_uuid")
        )
        return cls(
            str(record["model_id"]),
            int(record["dim"]),
            None if fingerprint is None else str(fingerprint),
            None if revision is None else str(revision),
            None if collection_uuid is None else str(collection_uuid),
        )

    def adopted(self, fingerprint: str | None, revision: str | None) -> ModelRecord:
        """Return this record completed by a sink of this version (fingerprint and uuid filled in)."""
        return replace(
            self,
            fingerprint=self.fingerprint or fingerprint,
            revision=self.revision if self.fingerprint else revision,
            collection_uuid=self.collection_uuid or uuid.uuid4().hex,
        )

    def describe(self) -> str:
        """Return the model as named in messages: id and short fingerprint (and revision, if known)."""
        revision = f", revision {self.revision[:12]}" if self.revision else ""
        return f"{self.model_id!r} (fingerprint {short_fingerprint(self.fingerprint)}{revision})"


def check_same_model(collection: str, recorded: ModelRecord, dim_in_schema: int, ours: ModelRecord) -> None:
    """Raise ModelMismatchError naming both models if ``ours`` must not write into ``collection``.

    Names and dimensions must be equal; fingerprints (full values) too, when both are known.
    """
    same_name = (recorded.model_id, recorded.dim, dim_in_schema) == (ours.model_id, ours.dim, ours.dim)
    if not same_name:
        raise ModelMismatchError(
            f"collection {collection!r} holds vectors of model {recorded.describe()} (dim {dim_in_schema}), "
            f"but this worker encodes with model {ours.describe()} (dim {ours.dim}): use another "
            f"collection name for {ours.model_id!r}, or drop {collection!r} to re-embed everything with it"
        )
    if recorded.fingerprint and ours.fingerprint and recorded.fingerprint != ours.fingerprint:
        raise ModelMismatchError(
            f"collection {collection!r} holds vectors of model {recorded.describe()}, but this worker's "
            f"model of the same name is {ours.describe()}: its files differ (a modified copy or another "
            "revision), so its vectors do not match the stored ones. Point EMBEDQ_MODEL at the files the "
            f"collection was built with, or write to another collection, or drop {collection!r} to "
            "re-embed everything with this model"
        )


def recorded_model(collection: str, description: dict[str, Any]) -> ModelRecord:
    """Return the model record of a described collection; ConfigError if it records none."""
    try:
        return ModelRecord.decode(description.get("properties", {})[MODEL_PROPERTY])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(
            f"collection {collection!r} exists but was not created by embedq (it records no model): "
            "choose another collection name"
        ) from None


def adopt(
    client: MilvusClient, collection: str, recorded: ModelRecord, ours: ModelRecord, *, timeout_s: float
) -> None:
    """Record ``ours``' fingerprint (and a collection uuid) in a collection an earlier version made."""
    adopted = recorded.adopted(ours.fingerprint, ours.revision)
    client.alter_collection_properties(
        collection, properties={MODEL_PROPERTY: adopted.encode()}, timeout=timeout_s
    )
    log.info(
        "collection %r had no model fingerprint or identity (made by an earlier embedq): recorded %s",
        collection,
        adopted.describe(),
    )

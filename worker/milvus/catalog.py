"""What a collection name stands for: the alias or physical collection, the model it records, its rows.

Callers address collections by name; the name may be a Milvus alias of a physical collection
(``docs`` -> ``docs__<model>``, see ``worker.milvus.aliases``) or, for collections made before
aliases, the physical collection itself. Both resolve here to the physical collection and the
model recorded in it, so a query is always embedded with the model its collection holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from producer.errors import ConfigError
from worker.milvus.schema import MODEL_PROPERTY, VECTOR_FIELD

if TYPE_CHECKING:
    from pymilvus import MilvusClient


@dataclass(frozen=True)
class CollectionInfo:
    """One embedq collection: its physical name, the aliases pointing to it, its model and rows."""

    name: str
    aliases: tuple[str, ...]
    model_id: str | None
    dim: int | None
    rows: int | None


def recorded_model(description: dict[str, Any]) -> tuple[str, int] | None:
    """Return (model id, dim) recorded in a collection description, or None if it records none."""
    try:
        record = json.loads(description.get("properties", {})[MODEL_PROPERTY])
        return str(record["model_id"]), int(record["dim"])
    except (KeyError, TypeError, ValueError):
        return None


def vector_dim(description: dict[str, Any]) -> int | None:
    """Return the dimension of the vector field of a collection description."""
    for field in description.get("fields", []):
        if field.get("name") == VECTOR_FIELD:
            return int(field.get("params", {}).get("dim", 0)) or None
    return None


def resolve(client: MilvusClient, name: str, *, timeout_s: float = 30.0) -> str | None:
    """Return the physical collection ``name`` stands for (itself, or its alias' target); None if neither."""
    if name in client.list_collections(timeout=timeout_s):
        return name
    aliases = client.list_aliases(timeout=timeout_s).get("aliases", [])
    if name in aliases:
        return str(client.describe_alias(name, timeout=timeout_s)["collection_name"])
    return None


def collection_model(client: MilvusClient, name: str, *, timeout_s: float = 30.0) -> tuple[str, str, int]:
    """Return (physical collection, model id, dim) of the collection or alias ``name``.

    Raises ConfigError when it does not exist or was not made by embedq.
    """
    physical = resolve(client, name, timeout_s=timeout_s)
    if physical is None:
        raise ConfigError(
            f"collection {name!r} does not exist in Milvus: fill it first with "
            f"`embedq backfill FILE --collection {name}` (or check EMBEDQ_MILVUS_URI)"
        )
    model = recorded_model(client.describe_collection(physical, timeout=timeout_s))
    if model is None:
        raise ConfigError(
            f"collection {name!r} was not created by embedq (it records no model): "
            "search it with pymilvus, or choose an embedq collection (`embedq collections` lists them)"
        )
    return physical, model[0], model[1]


def list_collections(client: MilvusClient, *, timeout_s: float = 30.0) -> list[CollectionInfo]:
    """Return every collection with its aliases, recorded model, dimension and row count."""
    by_target: dict[str, list[str]] = {}
    for alias in client.list_aliases(timeout=timeout_s).get("aliases", []):
        target = str(client.describe_alias(alias, timeout=timeout_s)["collection_name"])
        by_target.setdefault(target, []).append(str(alias))
    infos = []
    for name in sorted(client.list_collections(timeout=timeout_s)):
        description = client.describe_collection(name, timeout=timeout_s)
        model = recorded_model(description)
        stats = client.get_collection_stats(name, timeout=timeout_s)
        infos.append(
            CollectionInfo(
                name=name,
                aliases=tuple(sorted(by_target.get(name, []))),
                model_id=None if model is None else model[0],
                dim=vector_dim(description),
                rows=int(stats["row_count"]) if "row_count" in stats else None,
            )
        )
    return infos

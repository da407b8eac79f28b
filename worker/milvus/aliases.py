"""Collections addressed through Milvus aliases, so a model upgrade moves a name in one step.

``docs`` is an alias of a physical collection named for its model (``docs__<model>_<hash>``).
A reindex fills the physical collection of the new model while searches through ``docs`` keep
reading the old one, then moves the alias: Milvus switches an alias atomically, and a search
resolves the alias once (``worker.milvus.querying``), so no search mixes two models' vectors.
A collection made before aliases (a physical collection named ``docs``) is adopted when it is
first reindexed: renamed to its physical name, with the alias ``docs`` pointing at it. A reindex
adopts it only when the new collection is ready, after flushing it first, so Milvus Lite builds
its index while the new collection fills and the rename itself is quick.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from producer.errors import ConfigError
from worker.milvus.catalog import recorded_model, resolve
from worker.milvus.connection import connect_milvus, milvus_errors
from worker.milvus.lite_server import LiteWriteLock, ensure_lite_server, is_lite_path

if TYPE_CHECKING:
    from pymilvus import MilvusClient

_MAX_NAME = 255
RENAME_TIMEOUT_S = 1800.0
"""Deadline of an adoption's rename (Milvus Lite waits for the collection's pending index builds)."""
_SEPARATOR = "__"


@dataclass
class MilvusAccess:
    """A Milvus client and the guard every schema change or write goes through (Lite: one writer)."""

    client: MilvusClient
    write_guard: AbstractContextManager[object]
    timeout_s: float = 30.0

    def close(self) -> None:
        """Close the client."""
        self.client.close()


def open_access(uri: str, token: str | None, *, timeout_s: float = 30.0) -> MilvusAccess:
    """Connect to Milvus; a Lite path goes through the shared Lite server, with its write lock.

    The connection is the access' own, closed with it (commands open and close several in a run).
    """
    if is_lite_path(uri):
        client = connect_milvus(ensure_lite_server(uri), None, timeout_s=timeout_s, dedicated=True)
        return MilvusAccess(client, LiteWriteLock(uri), timeout_s)
    client = connect_milvus(uri, token, timeout_s=timeout_s, dedicated=True)
    return MilvusAccess(client, contextlib.nullcontext(), timeout_s)


def physical_name(alias: str, model_id: str) -> str:
    """Return the physical collection of ``alias`` for ``model_id``: readable, unique per model."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", model_id.rsplit("/", 1)[-1]).strip("_")[:40] or "model"
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    name = f"{alias}{_SEPARATOR}{slug}_{digest}"
    if len(name) > _MAX_NAME:
        raise ConfigError(f"collection name {alias!r} is too long to carry a model suffix: shorten it")
    return name


def current_physical(access: MilvusAccess, name: str) -> str | None:
    """Return the physical collection behind ``name`` as it is now (``name`` itself if old-style).

    None if ``name`` is neither a collection nor an alias. An old-style collection must record its
    model (it was made by embedq), or it could not be adopted later: refused here, before any work.
    """
    client, timeout_s = access.client, access.timeout_s
    with milvus_errors(f"look up collection {name!r}"):
        physical = resolve(client, name, timeout_s=timeout_s)
        if physical == name and recorded_model(client.describe_collection(name, timeout=timeout_s)) is None:
            raise ConfigError(
                f"collection {name!r} was not created by embedq (it records no model): "
                "it cannot be reindexed; choose an embedq collection (`embedq collections` lists them)"
            )
    return physical


def adopt(access: MilvusAccess, name: str) -> str | None:
    """Return the physical collection behind ``name``, turning an old-style collection into an alias.

    None if ``name`` is neither a collection nor an alias. An old-style collection is renamed to
    its physical name and ``name`` becomes an alias of it; searches that resolve ``name`` during
    those two calls fail with a clear error and can be retried. (Milvus refuses an alias named
    like a collection, so the collection itself must take another name.) On Milvus Lite a rename
    first flushes the collection and waits for its pending index builds: minutes for a large
    collection just written, milliseconds for one flushed and indexed before (``make_ready``).
    """
    client, timeout_s = access.client, access.timeout_s
    physical = current_physical(access, name)
    if physical is None or physical != name:
        return physical
    with milvus_errors(f"adopt collection {name!r}"):
        model = recorded_model(client.describe_collection(name, timeout=timeout_s))
        assert model is not None  # checked by current_physical
        target = physical_name(name, model[0])
        with access.write_guard:
            # Not cut short by the usual deadline: a rename the server finishes after the client
            # gave up would leave the name unset until the next reindex.
            client.rename_collection(name, target, timeout=max(timeout_s, RENAME_TIMEOUT_S))
            client.create_alias(target, name, timeout=timeout_s)
        client.load_collection(target, timeout=timeout_s)  # a rename releases the collection
        return target


def make_ready(access: MilvusAccess, physical: str) -> None:
    """Flush ``physical`` and load it, so searches and scans of it are fast from the first one.

    Milvus Lite keeps up to 128 MB of recent rows in memory and copies them for every search and
    query page: a collection just filled by a backfill answers each search in seconds until it is
    flushed; and no collection is loaded after a restart. A flush changes no row (on Lite it is
    not counted as a write; see ``LiteWriteLock``).
    """
    guard = access.write_guard
    uncounted = guard.uncounted() if isinstance(guard, LiteWriteLock) else guard
    with milvus_errors(f"flush and load collection {physical!r}"):
        with uncounted:
            access.client.flush(physical, timeout=access.timeout_s)
        access.client.load_collection(physical, timeout=access.timeout_s)


def point_alias(access: MilvusAccess, alias: str, physical: str) -> None:
    """Make ``alias`` name ``physical`` (created, or moved in one step) once it is flushed and loaded.

    So the first searches through the alias find the collection ready, not still in memory.
    """
    client, timeout_s = access.client, access.timeout_s
    make_ready(access, physical)
    with milvus_errors(f"move alias {alias!r} to {physical!r}"):
        aliases = client.list_aliases(timeout=timeout_s).get("aliases", [])
        with access.write_guard:
            if alias in aliases:
                client.alter_alias(physical, alias, timeout=timeout_s)
            else:
                client.create_alias(physical, alias, timeout=timeout_s)


def drop(access: MilvusAccess, physical: str) -> None:
    """Drop a physical collection (never one an alias still names)."""
    client, timeout_s = access.client, access.timeout_s
    with milvus_errors(f"drop collection {physical!r}"):
        still_named = client.list_aliases(collection_name=physical, timeout=timeout_s).get("aliases", [])
        if still_named:
            raise ConfigError(
                f"collection {physical!r} is still named by alias {still_named}: not dropping it"
            )
        with access.write_guard:
            client.drop_collection(physical, timeout=timeout_s)

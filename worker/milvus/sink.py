"""MilvusSink: one Milvus (or Milvus Lite) collection holding one model's vectors.

The collection records the model id, dimension and fingerprint it was created for (a collection
property, see ``model_record``), and every sink checks them before use, so vectors of two models
never mix, even two models under one name. Writes are upserts keyed by
document id, so a retried task writes the same rows again instead of duplicating them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import numpy as np
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from producer.errors import (
    ConfigError,
    EmbedqError,
    InvalidInputError,
    ModelMismatchError,
    PermanentError,
    SinkUnavailableError,
)
from producer.redaction import redact_url
from worker.milvus.column_upsert import ColumnUpsert
from worker.milvus.connection import connect_milvus, describe_error, is_out_of_space, is_transient
from worker.milvus.content import with_hash
from worker.milvus.lite_server import LiteWriteLock, ensure_lite_server, is_lite_path
from worker.milvus.model_record import ModelRecord
from worker.milvus.passage_rows import StoredDocument
from worker.milvus.passages import (
    delete_documents,
    grouped_search,
    has_passages,
    mark_passages,
    stored_documents,
)
from worker.milvus.rows import Rows, build_rows, checked_ids
from worker.milvus.schema import (
    ID_FIELD,
    MAX_TOP_K,
    METADATA_FIELD,
    METRIC,
    SEARCHABLE_FIELDS,
    TEXT_FIELD,
    VECTOR_FIELD,
)
from worker.milvus.search import SearchHit, search_hit
from worker.milvus.setup import check_recorded_model, create_collection, ensure_vector_index
from worker.milvus.sync import id_filter, stored_hashes

log = logging.getLogger(__name__)
ServerKind = Literal["lite", "server"]
T = TypeVar("T")

_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_NOT_LOADED_CODE = 101
_COLLECTION_MISSING_CODE = 100
_PASSAGES_RECHECK_S = 30.0  # how long a sink trusts "this collection holds no passages"
_COLUMN_CHECK_ROWS = 8  # rows compared with pymilvus' own request before the column-wise path is used


class MilvusSink:
    """Upserts, searches, counts and deletes the documents of one model in one collection."""

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        model_id: str,
        dim: int,
        *,
        server_kind: ServerKind | None = None,
        write_lock: AbstractContextManager[object] | None = None,
        timeout_s: float = 30.0,
        max_request_bytes: int = 16 * 1024 * 1024,
        fingerprint: str | None = None,
        revision: str | None = None,
        location: str = "",
    ) -> None:
        if not _COLLECTION_NAME.match(collection):
            raise ConfigError(
                f"invalid Milvus collection name {collection!r}: use letters, digits and underscores, "
                "starting with a letter or underscore (at most 255 characters)"
            )
        if not model_id:
            raise ConfigError("the model id of a Milvus sink is empty: pass the id of the loaded model")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"the vector dimension of a Milvus sink must be a positive int, got {dim!r}")
        self.client = client
        self.collection = collection
        self.model_id = model_id
        self.dim = dim
        self.fingerprint = fingerprint
        self.revision = revision
        self.location = location
        """Where this sink writes, as users see it: the URI without credentials, a Lite path made absolute."""
        self.record: ModelRecord | None = None
        """The collection's model record, once checked (its ``collection_uuid`` identifies it)."""
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self._server_kind = server_kind
        self._write_lock = write_lock
        self._ready = False
        self._fields: list[dict[str, Any]] = []
        self._column_upsert: ColumnUpsert | None = None
        self._column_checked = False
        self._has_passages = False
        self._passages_checked_at = -_PASSAGES_RECHECK_S

    @property
    def server_kind(self) -> ServerKind:
        """Return "lite" for Milvus Lite (in-process or its server), "server" for a Milvus server."""
        if self._server_kind is None:
            with self._errors("ask the version of", ConfigError):
                version = str(self.client.get_server_version(timeout=self.timeout_s))
            self._server_kind = "lite" if version.startswith("milvus_lite") else "server"
        return self._server_kind

    def exists(self) -> bool:
        """Return whether the collection exists (without creating it)."""
        with self._errors("look up", ConfigError):
            return bool(self.client.has_collection(self.collection, timeout=self.timeout_s))

    def ensure_collection(self) -> None:
        """Create the collection on first use, or check that it holds this model; then load it."""
        with self._errors("open", ConfigError):
            client, name, guard, timeout_s = self.client, self.collection, self._write_guard(), self.timeout_s
            ours = ModelRecord(self.model_id, self.dim, self.fingerprint, self.revision)
            if not client.has_collection(name, timeout=timeout_s):
                create_collection(client, name, ours, guard, timeout_s=timeout_s)
            self._fields, self.record = check_recorded_model(client, name, ours, guard, timeout_s=timeout_s)
            ensure_vector_index(client, name, lambda: self.server_kind == "lite", guard, timeout_s=timeout_s)
            client.load_collection(name, timeout=timeout_s)
        self._ready = True

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any]],
        vectors: np.ndarray,
        hashes: Sequence[str] | None = None,
    ) -> int:
        """Write rows (insert or replace by id); return how many distinct rows Milvus acknowledged.

        ``hashes`` (one per row, see ``worker.milvus.sync.content_hash``) are recorded with the rows.
        """
        if hashes is not None:
            metadata = [with_hash(meta, hash_hex) for meta, hash_hex in zip(metadata, hashes, strict=True)]
        rows = build_rows(
            ids, texts, metadata, vectors, collection=self.collection, model_id=self.model_id, dim=self.dim
        )
        if not rows.ids:
            return 0
        self._ensure_ready()
        written = 0
        for part in rows.batches(self.max_request_bytes):
            with self._errors("upsert into", InvalidInputError):
                # Built before taking the Lite write lock, so that the lock is held only for the write.
                request = self._column_request(part)
            with self._errors("upsert into", InvalidInputError), self._write_guard():
                acknowledged = self._send(part, request)
            if acknowledged != len(part.ids):
                raise SinkUnavailableError(
                    f"Milvus acknowledged {acknowledged} of {len(part.ids)} rows upserted into "
                    f"{self.collection!r}: retry the request (upserts are idempotent)"
                )
            written += acknowledged
        return written

    def _send(self, part: Rows, request: Any | None) -> int:
        """Send one request; return the number of rows Milvus acknowledged."""
        if request is not None and self._column_upsert is not None:
            try:
                return self._column_upsert.send(request, self.timeout_s)
            except TypeError:  # this pymilvus takes the call differently: nothing was sent
                log.warning("column-wise upsert not accepted by this pymilvus; using MilvusClient.upsert")
                self._column_upsert = None
        result = self.client.upsert(self.collection, part.as_dicts(), timeout=self.timeout_s)
        return int(result["upsert_count"])

    def _column_request(self, part: Rows) -> Any | None:
        """Build the column-wise request for ``part``; ``None`` means: use ``MilvusClient.upsert``.

        On the first call, the column-wise builder is checked against pymilvus' own row request
        on a few rows; if they differ in any byte, this sink keeps to ``MilvusClient.upsert``.
        """
        if not self._column_checked:
            self._column_checked = True
            builder = ColumnUpsert.create(
                self.client,
                self.collection,
                self._fields,
                id_field=ID_FIELD,
                vector_field=VECTOR_FIELD,
                text_field=TEXT_FIELD,
                metadata_field=METADATA_FIELD,
            )
            sample = part.head(_COLUMN_CHECK_ROWS)
            if builder is not None and builder.same_as_row_request(
                sample.ids, sample.vectors, sample.texts, sample.metadata, sample.as_dicts()
            ):
                self._column_upsert = builder
        if self._column_upsert is None:
            return None
        return self._column_upsert.build(part.ids, part.vectors, part.texts, part.metadata)

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        output_fields: Sequence[str] = SEARCHABLE_FIELDS,
        *,
        consistency_level: str = "Bounded",
        filter: str = "",
        group_by_document: bool = False,
    ) -> list[SearchHit]:
        """Return the ``top_k`` nearest documents to ``vector``, most similar first.

        ``filter`` is a Milvus boolean expression on the stored fields, e.g. ``metadata["lang"] == "en"``.
        ``group_by_document``: the best passage of each of the ``top_k`` nearest documents.
        """
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.dim,):
            raise ModelMismatchError(
                f"the query vector has shape {query.shape}, but collection {self.collection!r} holds "
                f"{self.dim}-dimensional vectors of model {self.model_id!r}: encode the query with that model"
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInputError(f"top_k must be an int from 1 to {MAX_TOP_K}, got {top_k!r}")
        unknown = sorted(set(output_fields) - set(SEARCHABLE_FIELDS))
        if unknown:
            raise InvalidInputError(f"unknown output fields {unknown}: choose from {list(SEARCHABLE_FIELDS)}")
        fields = list(output_fields)
        asked = sorted({*fields, METADATA_FIELD}) if group_by_document else fields

        def run(limit: int) -> list[dict[str, Any]]:
            results = self._read(
                "search",
                lambda: self.client.search(
                    self.collection,
                    data=[query.tolist()],
                    filter=filter,
                    limit=limit,
                    output_fields=asked,
                    search_params={"metric_type": METRIC, "params": {"ef": max(64, limit)}},
                    consistency_level=consistency_level,
                    timeout=self.timeout_s,
                ),
            )
            return list(results[0])

        if not group_by_document:
            return [search_hit(raw, fields) for raw in run(top_k)]
        return [search_hit(raw, fields, document=doc_id) for doc_id, raw in grouped_search(run, top_k)]

    def count(self) -> int:
        """Return the exact number of rows (strong consistency: every acknowledged write is counted)."""
        rows = self._read(
            "count the rows of",
            lambda: self.client.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=self.timeout_s,
            ),
        )
        return int(rows[0]["count(*)"])

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id, with their passages; return the rows Milvus reports deleted."""
        unique_ids = list(dict.fromkeys(checked_ids(ids)))
        if not unique_ids:
            return 0
        if not self.has_passages():
            return self.delete_rows(unique_ids)
        with self._errors("delete from", InvalidInputError):
            return delete_documents(
                self.client, self.collection, unique_ids, self._write_guard(), timeout_s=self.timeout_s
            )

    def has_passages(self) -> bool:
        """Return whether documents are stored as passages here (its property; "no" is re-read every 30 s)."""
        now = time.monotonic()
        if not self._has_passages and now - self._passages_checked_at >= _PASSAGES_RECHECK_S:
            self._ensure_ready()
            with self._errors("describe", ConfigError):
                self._has_passages = has_passages(self.client, self.collection, timeout_s=self.timeout_s)
            self._passages_checked_at = now
        return self._has_passages

    def mark_passages(self) -> None:
        """Record that this collection holds passages (before the first one is written)."""
        if self._has_passages:
            return
        self._ensure_ready()
        with self._errors("mark", InvalidInputError):
            mark_passages(self.client, self.collection, self._write_guard(), timeout_s=self.timeout_s)
        self._has_passages = True

    def delete_rows(self, ids: Sequence[str]) -> int:
        """Delete rows by exact id (a passage alone, say); return the number Milvus reports deleted."""
        unique_ids = list(dict.fromkeys(checked_ids(ids)))
        if not unique_ids:
            return 0
        self._ensure_ready()
        return self.delete_where(id_filter(unique_ids))

    def stored_documents(self, document_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """Return how each of ``document_ids`` that exists is stored: passages (count, hash), a plain row."""
        checked = checked_ids(document_ids)
        return self._read(
            "look up rows of",
            lambda: stored_documents(self.client, self.collection, checked, timeout_s=self.timeout_s),
        )

    def delete_where(self, filter_expr: str) -> int:
        """Delete the rows matching a filter expression; return the number Milvus reports deleted."""
        if not filter_expr.strip():
            raise InvalidInputError("refusing to delete with an empty filter: it would match every row")
        self._ensure_ready()
        with self._errors("delete from", InvalidInputError), self._write_guard():
            result = self.client.delete(self.collection, filter=filter_expr, timeout=self.timeout_s)
        # Milvus Lite returns the list of deleted ids, a Milvus server {"delete_count": n}.
        if isinstance(result, dict):
            return int(result["delete_count"])
        return len(result)

    def stored_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """Return the content hash recorded for each of ``ids`` that exists (batched queries)."""
        checked = checked_ids(ids)
        return self._read(
            "look up rows of",
            lambda: stored_hashes(self.client, self.collection, checked, timeout_s=self.timeout_s),
        )

    def close(self) -> None:
        """Close the Milvus client this sink writes through."""
        self.client.close()

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.ensure_collection()

    def _read(self, action: str, call: Callable[[], T]) -> T:
        """Run a search or query; a collection released by a server restart is loaded and asked again."""
        self._ensure_ready()
        with self._errors(action, InvalidInputError):
            try:
                return call()
            except MilvusException as exc:
                if exc.code != _NOT_LOADED_CODE:
                    raise
            self.client.load_collection(self.collection, timeout=self.timeout_s)
            return call()

    def collection_uuid(self) -> str | None:
        """Return the identity of the collection as it is now (None: it does not exist); never creates it.

        A collection dropped and created again has another uuid, so a backfill's saved progress can
        tell it from the one it wrote to.
        """
        if not self.exists():
            self._ready = False
            return None
        self.ensure_collection()
        return None if self.record is None else self.record.collection_uuid

    def _write_guard(self) -> AbstractContextManager[object]:
        return self._write_lock if self._write_lock is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _errors(self, action: str, permanent: type[PermanentError]) -> Iterator[None]:
        """Turn pymilvus failures into SinkUnavailableError (retry later) or ``permanent`` (do not retry)."""
        try:
            yield
        except EmbedqError:
            raise
        except (MilvusException, grpc.RpcError, OSError) as exc:
            detail = describe_error(exc)
            if isinstance(exc, MilvusException) and exc.code == _COLLECTION_MISSING_CODE:
                self._ready = False  # dropped since this sink checked it: the next call sets it up again
                raise SinkUnavailableError(
                    f"collection {self.collection!r} was dropped while in use, so Milvus could not {action} "
                    "it: the request can be retried (it creates the collection again)"
                ) from exc
            if is_out_of_space(exc):
                raise SinkUnavailableError(
                    f"Milvus is out of disk space and could not {action} collection {self.collection!r} "
                    f"({detail}): free space where it stores its data; the request can be retried"
                ) from exc
            if is_transient(exc):
                raise SinkUnavailableError(
                    f"Milvus was unavailable to {action} collection {self.collection!r} ({detail}): "
                    "check that the server is running; the request can be retried"
                ) from exc
            raise permanent(f"Milvus refused to {action} collection {self.collection!r}: {detail}") from exc


def open_sink(
    uri: str,
    token: str | None,
    collection: str,
    model_id: str,
    dim: int,
    *,
    timeout_s: float = 30.0,
    fingerprint: str | None = None,
    revision: str | None = None,
) -> MilvusSink:
    """Connect and return a sink; a Lite path is served by one shared Lite server with serialised writes."""
    location = str(Path(uri).expanduser().resolve()) if is_lite_path(uri) else redact_url(uri)
    sink = partial(
        MilvusSink, fingerprint=fingerprint, revision=revision, timeout_s=timeout_s, location=location
    )
    if is_lite_path(uri):
        client = connect_milvus(ensure_lite_server(uri), None, timeout_s=timeout_s)
        return sink(client, collection, model_id, dim, server_kind="lite", write_lock=LiteWriteLock(uri))
    return sink(connect_milvus(uri, token, timeout_s=timeout_s), collection, model_id, dim)

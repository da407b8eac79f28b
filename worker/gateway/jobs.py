"""Async jobs for bulk work: ``POST /v1/jobs`` (202 at once), its status, and its result.

A job is only its id: the tasks and results live on the broker, so any gateway process (or a
Python client) can report on a job another one took, also after that one restarted.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from producer.errors import MessageDecodeError
from producer.job import JobStatus, TaskOutcome
from producer.protocol.documents import Document
from producer.protocol.messages import EmbedResult, UpsertResult
from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings
from worker.gateway.errors import ApiError, bad_request, from_embedq_error
from worker.gateway.limits import checked_texts, read_json

JOB_MAX_INPUTS = 1_000_000  # the body limit is the real bound
NPY_TYPES = ("application/x-npy", "application/octet-stream")


def _documents(value: object, max_text_chars: int) -> list[Document]:
    if not isinstance(value, list) or not value:
        raise bad_request("'documents' must be a non-empty list of {id, text, metadata} objects", "documents")
    documents = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise bad_request(f"documents[{index}] needs a non-empty string 'id'", "documents")
        text, metadata = item.get("text"), item.get("metadata") or {}
        if not isinstance(text, str):
            raise bad_request(f"documents[{index}].text must be a string", "documents")
        if not isinstance(metadata, dict):
            raise bad_request(f"documents[{index}].metadata must be an object", "documents")
        documents.append(Document(id=item["id"], text=text, metadata=metadata))
    checked_texts(
        [document.text for document in documents],
        "documents",
        max_inputs=len(documents),
        max_text_chars=max_text_chars,
    )
    return documents


async def create_job(request: Request) -> Response:
    """Enqueue texts to embed (``input``), or ``documents`` to upsert into ``collection``; answer 202."""
    backend: Backend = request.app.state.backend
    config: GatewaySettings = request.app.state.config
    body = await read_json(request, config.max_body_bytes)
    model_param = body.get("model")
    if model_param is not None and not isinstance(model_param, str):
        raise bad_request("'model' must be a string naming a model from GET /v1/models", "model")
    model, _ = await backend.model_dim(model_param or None)
    client = backend.client(model)
    if "documents" in body:
        collection = body.get("collection")
        if not isinstance(collection, str) or not collection:
            raise bad_request("'collection' (a Milvus collection name) goes with 'documents'", "collection")
        documents = _documents(body["documents"], backend.settings.max_text_chars)
        job_id = await asyncio.to_thread(client.submit_upsert, collection, documents)
        kind = "upsert"
    elif "input" in body:
        texts = checked_texts(
            body["input"],
            "input",
            max_inputs=JOB_MAX_INPUTS,
            max_text_chars=backend.settings.max_text_chars,
        )
        job_id = (await asyncio.to_thread(client.embed_documents, texts)).id
        kind = "embed"
    else:
        raise bad_request("send 'input' (texts to embed) or 'documents' with a 'collection'", "input")
    answer = {"id": job_id, "object": "job", "kind": kind, "model": model, "status": "pending"}
    location = f"/v1/jobs/{job_id}"
    return JSONResponse(answer, status_code=202, headers={"Location": location})


def _status_body(status: JobStatus) -> dict[str, Any]:
    error = None
    if status.error_type is not None:
        error = {"type": status.error_type, "message": status.error_message}
    return {
        "id": status.id,
        "object": "job",
        "status": status.state,
        "tasks_done": status.tasks_done,
        "tasks_total": status.tasks_total,
        "error": error,
    }


async def job_status(request: Request) -> Response:
    """Return the job's state: pending, started, done or failed (with the worker's error)."""
    backend: Backend = request.app.state.backend
    status = await asyncio.to_thread(backend.client(backend.default_model).status, request.path_params["id"])
    return JSONResponse(_status_body(status))


def _read_outcomes(backend: Backend, job_id: str) -> list[TaskOutcome]:
    reader = backend.client(backend.default_model).reader
    manifest = reader.manifest(job_id)
    return reader.outcomes([job_id] if manifest is None else list(manifest.task_ids))


async def job_result(request: Request) -> Response:
    """Return the job's vectors (base64 float32 in JSON, or ``.npy`` by Accept) or an upsert's count."""
    backend: Backend = request.app.state.backend
    job_id = request.path_params["id"]
    outcomes = await asyncio.to_thread(_read_outcomes, backend, job_id)
    for outcome in outcomes:
        if outcome.error is not None:
            raise from_embedq_error(outcome.error)
    if any(outcome.state != "done" for outcome in outcomes):
        done = sum(outcome.state == "done" for outcome in outcomes)
        raise ApiError(
            409,
            f"job {job_id} is not done ({done} of {len(outcomes)} tasks done, or the id is unknown or "
            f"expired): poll GET /v1/jobs/{job_id} until its status is done",
            code="job_not_done",
        )
    upsert = _upsert_result(outcomes)
    if upsert is not None:
        return JSONResponse(
            {"id": job_id, "object": "job.result", "collection": upsert.collection, "written": upsert.written}
        )
    results = [EmbedResult.decode(outcome.value) for outcome in outcomes]
    vectors = np.concatenate([result.view() for result in results], axis=0)
    accept = request.headers.get("accept", "")
    if any(kind in accept for kind in NPY_TYPES):
        buffer = io.BytesIO()
        np.save(buffer, vectors.astype("<f4"), allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/x-npy")
    return JSONResponse(
        {
            "id": job_id,
            "object": "job.result",
            "model": results[0].model,
            "count": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "dtype": "<f4",
            "vectors": base64.b64encode(vectors.astype("<f4").tobytes()).decode("ascii"),
        }
    )


def _upsert_result(outcomes: list[TaskOutcome]) -> UpsertResult | None:
    if len(outcomes) != 1:
        return None
    try:
        return UpsertResult.decode(outcomes[0].value)
    except MessageDecodeError:
        return None


ROUTES = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs/{id}", job_status, methods=["GET"]),
    Route("/v1/jobs/{id}/result", job_result, methods=["GET"]),
]

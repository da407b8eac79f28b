"""OpenAI-compatible routes: ``POST /v1/embeddings`` and ``GET /v1/models``."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings
from worker.gateway.errors import bad_request
from worker.gateway.limits import checked_dimensions, checked_texts, read_json, timing_headers
from worker.gateway.responses import Answer, FastJSONResponse
from worker.gateway.vectors import base64_float32, first_dimensions

ENCODING_FORMATS = ("float", "base64")
_OWNER = "embedq"


async def embeddings_answer(body: dict[str, Any], backend: Backend, config: GatewaySettings) -> Answer:
    """Embed ``input`` (a string or a list of strings) of a parsed body with ``model``; OpenAI's shape."""
    model_param = body.get("model")
    if model_param is not None and not isinstance(model_param, str):
        raise bad_request("'model' must be a string naming a model from GET /v1/models", "model")
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise bad_request(
            f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}", "encoding_format"
        )
    if "input" not in body:
        raise bad_request("'input' is required: a string or a list of strings", "input")
    texts = checked_texts(
        body["input"],
        "input",
        max_inputs=config.max_client_batch_size,
        max_text_chars=backend.settings.max_text_chars,
    )
    model, dim = await backend.model_dim(model_param or None)
    dimensions = checked_dimensions(body.get("dimensions"), dim)
    embedded = await backend.embed(model, texts)
    vectors = embedded.vectors if dimensions is None else first_dimensions(embedded.vectors, dimensions)
    if encoding_format == "base64":
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i, "embedding": base64_float32(v)} for i, v in enumerate(vectors)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    usage = {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}
    answer = {"object": "list", "data": data, "model": model, "usage": usage}
    return answer, timing_headers(embedded.enqueue_s, embedded.wait_s)


async def create_embeddings(request: Request) -> Response:
    """Embed ``input`` (a string or a list of strings) with ``model``; OpenAI's answer shape."""
    config: GatewaySettings = request.app.state.config
    body = await read_json(request, config.max_body_bytes)
    content, headers = await embeddings_answer(body, request.app.state.backend, config)
    return FastJSONResponse(content, headers=headers)


async def list_models(request: Request) -> Response:
    """List the models some live worker serves now."""
    backend: Backend = request.app.state.backend
    live = await backend.live_models()
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": _OWNER, "dimensions": dim}
        for model, dim in sorted(live.items())
    ]
    return JSONResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/embeddings", create_embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]

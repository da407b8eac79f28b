"""Text-embeddings-inference-compatible routes: ``POST /embed`` (and ``POST /``) and ``GET /info``.

Milvus 2.6's TEI embedding function and Hugging Face's ``InferenceClient.feature_extraction`` call
these. Inputs are always cut to the model's ``max_length`` tokens (as model2vec does), so
``truncate`` is accepted and ``truncation_direction`` may only be right.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.encoding.encoder import DEFAULT_MAX_LENGTH
from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings
from worker.gateway.errors import bad_request
from worker.gateway.limits import checked_dimensions, checked_texts, read_json, timing_headers
from worker.gateway.responses import Answer, FastJSONResponse
from worker.gateway.vectors import first_dimensions, normalized

TEI_COMPATIBLE_VERSION = "1.8.0"


def _checked_options(body: dict[str, object]) -> bool:
    """Check the TEI options this server honours; return ``normalize``."""
    normalize = body.get("normalize", True)
    if normalize is None:
        normalize = True
    if not isinstance(normalize, bool):
        raise bad_request(f"'normalize' must be true or false, got {normalize!r}", "normalize")
    truncate = body.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise bad_request(f"'truncate' must be true or false, got {truncate!r}", "truncate")
    direction = body.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise bad_request(
            f"'truncation_direction' {direction!r} is not supported: texts are cut on the right, "
            "at the model's max_length tokens",
            "truncation_direction",
        )
    return normalize


async def embed_answer(body: dict[str, Any], backend: Backend, config: GatewaySettings) -> Answer:
    """Embed ``inputs`` (a string or a list of strings) of a parsed body; answer a bare list of vectors."""
    if "inputs" not in body:
        raise bad_request("'inputs' is required: a string or a list of strings", "inputs")
    normalize = _checked_options(body)
    texts = checked_texts(
        body["inputs"],
        "inputs",
        max_inputs=config.max_client_batch_size,
        max_text_chars=backend.settings.max_text_chars,
    )
    model, dim = await backend.model_dim(None)
    dimensions = checked_dimensions(body.get("dimensions"), dim)
    embedded = await backend.embed(model, texts)
    vectors = embedded.vectors
    if dimensions is not None:
        vectors = first_dimensions(vectors, dimensions)
    elif normalize:
        vectors = normalized(vectors)
    return vectors, timing_headers(embedded.enqueue_s, embedded.wait_s)


async def embed(request: Request) -> Response:
    """Embed ``inputs`` (a string or a list of strings); answer a bare list of float lists."""
    config: GatewaySettings = request.app.state.config
    body = await read_json(request, config.max_body_bytes)
    content, headers = await embed_answer(body, request.app.state.backend, config)
    return FastJSONResponse(content, headers=headers)


async def embed_alias(request: Request) -> Response:
    """``POST /``: the same as ``POST /embed`` (TEI serves both)."""
    return await embed(request)


async def info(request: Request) -> Response:
    """Describe the served model the way TEI's ``/info`` does."""
    backend: Backend = request.app.state.backend
    config: GatewaySettings = request.app.state.config
    live = await backend.live_models()
    return JSONResponse(
        {
            "model_id": backend.default_model,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": {"embedding": {"pooling": "mean"}},
            "dimensions": live.get(backend.default_model),
            "max_concurrent_requests": backend.settings.max_queue_depth,
            "max_input_length": DEFAULT_MAX_LENGTH,
            "max_batch_tokens": DEFAULT_MAX_LENGTH * config.max_client_batch_size,
            "max_client_batch_size": config.max_client_batch_size,
            "auto_truncate": True,
            "tokenization_workers": None,
            "version": TEI_COMPATIBLE_VERSION,
            "served_by": "embedq",
        }
    )


ROUTES = [
    Route("/embed", embed, methods=["POST"]),
    Route("/", embed_alias, methods=["POST"]),
    Route("/info", info, methods=["GET"]),
]

"""The OpenAPI 3.1 description of the gateway (``/openapi.json``) and its Swagger UI page (``/docs``).

Written by hand rather than generated: the routes validate their bodies themselves (to answer in
OpenAI's error shape), so there are no models to generate it from.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 404, 413, 429, 503, 504)}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str, body: dict[str, Any] | None = None, ok: str = "200", secure: bool = True
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": "success"}, **_ERRORS}}
    if body is not None:
        operation["requestBody"] = body
    if not secure:
        operation["security"] = []
    return operation


_EMBEDDINGS = _json_body(
    {
        "input": {**_TEXTS, "description": "text(s) to embed; token-id arrays are refused"},
        "model": {"type": "string", "description": "a model id from GET /v1/models"},
        "encoding_format": {"enum": ["float", "base64"], "description": "base64: little-endian float32"},
        "dimensions": {"type": "integer", "description": "keep the first N components, renormalised"},
        "user": {"type": "string", "description": "ignored"},
    },
    ["input"],
)
_TEI_EMBED = _json_body(
    {
        "inputs": _TEXTS,
        "normalize": {"type": "boolean", "default": True},
        "truncate": {"type": "boolean", "description": "accepted; texts are always cut at max_length tokens"},
        "truncation_direction": {"enum": ["right", "Right"]},
        "dimensions": {"type": "integer", "description": "keep the first N components, renormalised"},
    },
    ["inputs"],
)
_JOB = _json_body(
    {
        "input": {**_TEXTS, "description": "texts to embed"},
        "documents": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "text": {"type": "string"},
                    "metadata": {"type": "object"},
                },
                "required": ["id", "text"],
            },
        },
        "collection": {"type": "string", "description": "Milvus collection the documents are upserted into"},
        "model": {"type": "string"},
    },
    [],
)
_SEARCH = _json_body(
    {
        "collection": {"type": "string"},
        "query": {"type": "string"},
        "top_k": {"type": "integer", "default": 10},
        "filter": {"type": "string", "description": 'Milvus expression, e.g. metadata["lang"] == "en"'},
        "group_by_document": {
            "type": "boolean",
            "default": False,
            "description": "the best passage of each document (collections filled with --split-tokens)",
        },
    },
    ["collection", "query"],
)

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "embedq gateway",
        "version": "0.1.0",
        "description": "OpenAI- and TEI-compatible embeddings, async jobs and search on embedq's queues.",
    },
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            k: {"type": ["string", "null"]} for k in ("message", "type", "param", "code")
                        },
                    }
                },
            }
        },
    },
    "paths": {
        "/v1/embeddings": {"post": _op("Embed texts (OpenAI-compatible)", _EMBEDDINGS)},
        "/v1/models": {"get": _op("Models with live workers")},
        "/embed": {"post": _op("Embed texts (TEI-compatible): a bare list of float lists", _TEI_EMBED)},
        "/": {"post": _op("Alias of POST /embed", _TEI_EMBED)},
        "/info": {"get": _op("The served model (TEI-compatible)")},
        "/v1/jobs": {"post": _op("Start an embedding or upsert job; answers 202 with its id", _JOB, "202")},
        "/v1/jobs/{id}": {"get": _op("A job's state: pending, started, done or failed")},
        "/v1/jobs/{id}/result": {"get": _op("A done job's vectors (base64 float32, or .npy by Accept)")},
        "/v1/search": {"post": _op("Nearest documents of a collection to a query", _SEARCH)},
        "/health": {"get": _op("The process is up", secure=False)},
        "/ready": {"get": _op("Broker reachable and a worker serves the model (else 503)", secure=False)},
        "/metrics": {"get": _op("Prometheus metrics", secure=False)},
    },
}

_SWAGGER_HTML = """<!doctype html>
<html><head><title>embedq gateway</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script></body></html>
"""


async def openapi_json(request: Request) -> Response:
    """Serve the OpenAPI description."""
    return JSONResponse(SPEC)


async def docs(request: Request) -> Response:
    """Serve the Swagger UI page reading ``/openapi.json``."""
    return HTMLResponse(_SWAGGER_HTML)


ROUTES = [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]

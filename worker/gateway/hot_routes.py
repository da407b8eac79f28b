"""The hot POST routes (``/embed``, ``/``, ``/v1/embeddings``) answered in plain ASGI, ahead of Starlette.

Nearly all traffic goes to these three routes, where Starlette's per-request objects (the
middleware closures wrapping ``send``, ``Request`` and its body stream, ``Response`` and its header
building) cost more than the route's own work. This outermost app answers them itself, with the
same answers: the API-key check, the body limits, the route's checks and embedding, the JSON body
(orjson), the ``x-request-id``/``x-total-time`` headers and the HTTP metrics. Every other request,
and the lifespan, goes to the Starlette app unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from producer.errors import EmbedqError
from worker.gateway.auth import authorised, unauthorised
from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings
from worker.gateway.errors import ApiError, from_embedq_error
from worker.gateway.limits import receive_json
from worker.gateway.metrics import HttpMetrics, RequestIds
from worker.gateway.openai import embeddings_answer
from worker.gateway.responses import Answer, dumps
from worker.gateway.tei import embed_answer

logger = logging.getLogger(__name__)

AnswerFor = Callable[[dict[str, Any], Backend, GatewaySettings], Awaitable[Answer]]
HOT_ROUTES: dict[str, AnswerFor] = {
    "/embed": embed_answer,
    "/": embed_answer,
    "/v1/embeddings": embeddings_answer,
}
_JSON = (b"content-type", b"application/json")


class GatewayApp:
    """The gateway's ASGI app: the hot routes answered here, everything else by ``app``."""

    def __init__(self, app: Starlette, metrics: HttpMetrics, api_keys: frozenset[str]) -> None:
        self.app = app
        self.state = app.state  # the backend and settings, set by the Starlette app's lifespan
        self._metrics = metrics
        self._keys = tuple(key.encode() for key in api_keys)
        self._request_id = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a hot route here, anything else through the Starlette app."""
        answer_for = (
            HOT_ROUTES.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if answer_for is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 200
        try:
            try:
                if self._keys and not authorised(scope, self._keys):
                    raise unauthorised()
                config: GatewaySettings = self.state.config
                body = await receive_json(scope, receive, config.max_body_bytes)
                content, headers = await answer_for(body, self.state.backend, config)
                raw = dumps(content)
            except EmbedqError as exc:
                raise from_embedq_error(exc) from exc
        except ApiError as error:
            status, headers = error.status, error.headers
            raw = dumps(
                {
                    "error": {
                        "message": error.message,
                        "type": error.type,
                        "param": error.param,
                        "code": error.code,
                    }
                }
            )
        except ClientDisconnect:
            return  # nobody to answer
        except Exception:
            logger.exception("POST %s failed", scope["path"])
            status, headers = 500, {}
            raw = dumps(
                {
                    "error": {
                        "message": "internal server error",
                        "type": "server_error",
                        "param": None,
                        "code": "internal_error",
                    }
                }
            )
        request_id = self._request_id(scope)
        total_ms = (time.perf_counter() - started) * 1000
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    _JSON,
                    (b"content-length", str(len(raw)).encode()),
                    *[
                        (name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in headers.items()
                    ],
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-total-time", str(round(total_ms)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})
        self._metrics.observe(scope["path"], status, time.perf_counter() - started)

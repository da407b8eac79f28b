"""Connecting to Milvus: failures mapped onto the embedq errors, credentials never shown."""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterator, Sequence

import grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from producer.errors import ConfigError, EmbedqError, InvalidInputError, SinkUnavailableError
from producer.redaction import redact_url, url_secrets

_USERINFO = re.compile(r"(^|[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_TRANSIENT_GRPC_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
_TRANSIENT_MILVUS_CODES = {2, 8}  # connect failed / service unavailable, rate limited
_TRANSIENT_HINTS = ("server unavailable", "service unavailable", "not ready")


def connect_milvus(
    uri: str, token: str | None = None, *, timeout_s: float = 10.0, dedicated: bool = False
) -> MilvusClient:
    """Connect to a Milvus server URI or a Lite path; failures never show the token or a URI password.

    ``dedicated``: a connection of its own, closed with the client (pymilvus otherwise shares one
    per address and keeps it open after its last client closes; idle for a minute, its keepalive
    pings get it refused by a Lite server with "too many pings", and the next client fails).
    """
    if not uri or not uri.strip():
        raise ConfigError(
            "the Milvus URI is empty: set EMBEDQ_MILVUS_URI to http://host:19530 or a Lite path "
            "like ./embedq.db"
        )
    secrets = _secrets(uri, token)
    shown_uri = redact_uri(uri)
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=timeout_s, dedicated=dedicated)
    except ConnectionConfigException as exc:
        cause = _safe_cause(exc, secrets)
        if "open local milvus failed" in exc.message.lower():
            raise SinkUnavailableError(
                f"cannot open the Milvus Lite database {shown_uri}: another process holds it open. "
                "Let every process share one Lite server (worker.milvus.lite_server.ensure_lite_server), "
                "or close the other process"
            ) from cause
        raise ConfigError(
            f"invalid Milvus URI {shown_uri}: {_scrub(exc.message, secrets)}; set EMBEDQ_MILVUS_URI to "
            "http(s)://host:port or a local path ending in .db"
        ) from cause
    except (MilvusException, grpc.RpcError, OSError) as exc:
        cause = _safe_cause(exc, secrets)
        detail = _scrub(describe_error(exc), secrets)
        if not is_transient(exc):
            raise ConfigError(
                f"Milvus at {shown_uri} refused the connection ({detail}): check EMBEDQ_MILVUS_TOKEN"
            ) from cause
        raise SinkUnavailableError(
            f"cannot connect to Milvus at {shown_uri} ({detail}): check that the server is running and "
            "reachable and that EMBEDQ_MILVUS_URI is right; the request can be retried"
        ) from cause
    except ValueError as exc:
        raise ConfigError(f"invalid Milvus URI {shown_uri}: {_scrub(str(exc), secrets)}") from None


def redact_uri(uri: str) -> str:
    """Return ``uri`` with any ``user:password@`` replaced by ``***@`` (the broker URLs' own redaction)."""
    return redact_url(uri, keep_user=False)


def is_transient(exc: BaseException) -> bool:
    """Tell whether a pymilvus, gRPC or OS error may go away on retry (connection, overload, timeout)."""
    if isinstance(exc, (OSError, grpc.RpcError)):
        return True
    if not isinstance(exc, MilvusException):
        return False
    if isinstance(exc.code, grpc.StatusCode):
        return exc.code in _TRANSIENT_GRPC_CODES
    message = str(exc.message).lower()
    return exc.code in _TRANSIENT_MILVUS_CODES or any(hint in message for hint in _TRANSIENT_HINTS)


@contextlib.contextmanager
def milvus_errors(action: str, *, unavailable_hint: str = "retry") -> Iterator[None]:
    """Turn pymilvus failures to ``action`` into SinkUnavailableError (retry) or InvalidInputError (fix it).

    ``unavailable_hint`` ends the message of a transient failure: what the user can do about it.
    """
    try:
        yield
    except EmbedqError:
        raise
    except (MilvusException, OSError) as exc:
        detail = describe_error(exc)
        if is_transient(exc):
            raise SinkUnavailableError(
                f"Milvus was unavailable to {action} ({detail}): {unavailable_hint}"
            ) from exc
        raise InvalidInputError(f"Milvus refused to {action}: {detail}") from exc


_OUT_OF_SPACE_HINTS = ("no space left on device", "disk quota exceeded", "[errno 28]", "[errno 122]")


def is_out_of_space(exc: BaseException) -> bool:
    """Tell whether Milvus failed because its disk is full (Lite reports it as a plain error, code 1)."""
    if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
        return True
    message = str(exc.message if isinstance(exc, MilvusException) else exc).lower()
    return any(hint in message for hint in _OUT_OF_SPACE_HINTS)


def describe_error(exc: BaseException) -> str:
    """Summarise a pymilvus, gRPC or OS error in one line, with any ``user:password@`` redacted."""
    if isinstance(exc, MilvusException):
        return _scrub(f"code {exc.code}: {exc.message}", ())
    return _scrub(f"{type(exc).__name__}: {exc}", ())


def _secrets(uri: str, token: str | None) -> list[str]:
    """List what an error must not show: the token, its password part, and a password in the URI."""
    found = [token, token.partition(":")[2]] if token else []
    found += url_secrets(uri)
    return [secret for secret in found if secret]


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", text)


def _safe_cause(exc: BaseException, secrets: Sequence[str]) -> BaseException:
    """Return ``exc`` to chain from, or a scrubbed stand-in if its traceback would show a secret."""
    shown = "".join(traceback.format_exception(exc))
    if not any(secret in shown for secret in secrets) and _USERINFO.search(shown) is None:
        return exc
    return RuntimeError(f"{type(exc).__name__}: {_scrub(str(exc), secrets)}")

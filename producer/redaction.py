"""Keeping credentials out of messages: one function for broker, result backend and Milvus URLs.

A password that is not percent-encoded may hold ``#``, ``/``, ``?``, ``:`` or ``@``, which
``urlsplit`` reads as the fragment, path, query, port or host. So the user info is found by hand:
everything between ``scheme://`` (if any) and the last ``@``, however the rest would parse.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY_KEYS: Final = frozenset({"password", "token", "secret"})
_NOT_IN_A_USER_NAME: Final = frozenset("/?#@")


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """Split ``url`` into ``(scheme://, user info or None, the rest from the host on)``."""
    scheme, separator, rest = url.partition("://")
    head = f"{scheme}{separator}" if separator else ""
    if not separator:
        rest = url
    at = rest.rfind("@")
    if at < 0:
        return head, None, rest
    return head, rest[:at], rest[at + 1 :]


def _redact_query(rest: str) -> str:
    """Replace secret query values (``password=``, ``token=``) of the host-on part of a URL."""
    if "?" not in rest:
        return rest
    try:
        parts = urlsplit(f"//{rest}")
    except ValueError:
        return rest.partition("?")[0] + "?<redacted>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(key, "***" if key.lower() in _SECRET_QUERY_KEYS else value) for key, value in pairs])
    return urlunsplit(("", parts.netloc, parts.path, query, parts.fragment)).removeprefix("//")


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """Return ``url`` with its password (user info, ``password=`` query) replaced by ``***``.

    ``keep_user`` keeps a user name that precedes a password (``redis://user:***@host``);
    otherwise the whole user info becomes ``***``.
    """
    head, userinfo, rest = split_userinfo(url)
    if userinfo is None:
        return head + _redact_query(rest)
    user, has_password, _ = userinfo.partition(":")
    if keep_user and has_password and not _NOT_IN_A_USER_NAME.intersection(user):
        shown = f"{user}:***@"
    else:
        shown = "***@"
    return head + shown + _redact_query(rest)


def url_secrets(url: str) -> list[str]:
    """List what a message about ``url`` must not show: its user info and the password in it."""
    _, userinfo, _ = split_userinfo(url)
    if not userinfo:
        return []
    password = userinfo.partition(":")[2]
    return [secret for secret in (userinfo, password) if secret]

"""Megabyte values to and from Redis without the client library's copies.

redis-py with hiredis copies a value twice on the way out (``bytes(memoryview)``, then
``hiredis.pack_command``) and twice on the way in (its read buffer, then the reply's bytes), each
into fresh memory. For a bulk task's vectors (4 MB) that is most of what storing and reading a
result costs. Here a value leaves from the caller's buffer (a ``memoryview`` argument is its own
chunk of the command) and arrives in the caller's buffer (``recv_into``), on a connection of the
client's own pool, so TLS, Sentinel and the pool's limits apply as to any other command.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.exceptions import ResponseError

from producer.errors import MessageDecodeError

Command = Sequence[Any]
_CRLF = b"\r\n"
_MAX_HEADER = 64
_MAX_ERROR_LINE = 64 * 1024
_OWN_CHUNK_BYTES = 64 * 1024  # a larger bytes argument is sent as it is, not copied into the command


@contextmanager
def _lent(client: Any) -> Iterator[Any]:
    """Lend a connection of the client's pool; drop it after anything but a whole error reply.

    A ResponseError or MessageDecodeError leaves the connection at a reply boundary (the one
    exception, a value not read, disconnects itself); any other failure leaves it unknown.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        yield connection
    except (ResponseError, MessageDecodeError):
        raise
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _pack(encode: Any, commands: Sequence[Command]) -> list[bytes | memoryview]:
    """RESP chunks of ``commands``; a memoryview or large bytes argument is sent as it is, not copied."""
    chunks: list[bytes | memoryview] = []
    pending: list[bytes] = []
    for command in commands:
        pending.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, memoryview) or (isinstance(arg, bytes) and len(arg) > _OWN_CHUNK_BYTES):
                view = memoryview(arg)
                pending.append(b"$%d\r\n" % view.nbytes)
                chunks.append(b"".join(pending))
                chunks.append(view)
                pending = [_CRLF]
            else:
                value = encode(arg)
                pending.append(b"$%d\r\n%s\r\n" % (len(value), value))
    if pending:
        chunks.append(b"".join(pending))
    return chunks


def execute_transaction(client: Any, commands: Sequence[Command]) -> list[Any]:
    """Run ``commands`` in one MULTI/EXEC round trip and return their replies (as ``pipeline()`` does).

    A memoryview argument goes to the socket from the caller's memory. A command that fails
    raises its ResponseError after every reply was read (the connection stays usable); a
    connection error drops the connection and propagates.
    """
    with _lent(client) as connection:
        chunks = _pack(connection.encoder.encode, [("MULTI",), *commands, ("EXEC",)])
        connection.send_packed_command(chunks, check_health=False)
        first_error: ResponseError | None = None
        for _ in range(len(commands) + 1):  # OK for MULTI, QUEUED for each command
            try:
                connection.read_response()
            except ResponseError as exc:
                first_error = first_error or exc
        try:
            replies = connection.read_response()
        except ResponseError as exc:  # EXECABORT after a command was refused while queueing
            raise first_error or exc from None
    if first_error is not None:
        raise first_error
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return list(replies)


def _read_header(sock: Any) -> bytes:
    """Read one reply line (a length, or an error message) a byte at a time: nothing past it."""
    header = bytearray()
    limit = _MAX_HEADER
    while not header.endswith(_CRLF):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("Redis closed the connection in a reply")
        header += byte
        if header == b"-":
            limit = _MAX_ERROR_LINE
        if len(header) > limit:
            raise ConnectionError(f"unexpected reply from Redis: {bytes(header)!r:.80}")
    return bytes(header[:-2])


def _read_exactly(sock: Any, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        count = sock.recv_into(view[got:], view.nbytes - got)
        if not count:
            raise ConnectionError("Redis closed the connection in a reply")
        got += count


def read_into(client: Any, key: str, out: memoryview) -> bool:
    """GET ``key`` straight into ``out`` (bytes); False if the key does not exist.

    A value of another size than ``out`` raises MessageDecodeError. A client whose connections
    hold no plain socket (another connection class) reads through the library, with its copies.
    """
    with _lent(client) as connection:
        sock = getattr(connection, "_sock", None)
        if sock is None or not hasattr(sock, "recv_into"):
            connection.send_command("GET", key)
            value = connection.read_response()
            if value is None:
                return False
            if len(value) != out.nbytes:
                raise MessageDecodeError(f"{key} holds {len(value)} bytes, expected {out.nbytes}")
            out[:] = value
            return True
        connection.send_command("GET", key, check_health=False)
        header = _read_header(sock)
        kind, rest = header[:1], header[1:]
        if kind == b"-":
            raise ResponseError(rest.decode("utf-8", "replace"))
        if kind == b"_" or (kind == b"$" and rest == b"-1"):
            return False
        if kind != b"$":
            raise ConnectionError(f"unexpected reply from Redis to GET: {header!r:.80}")
        size = int(rest)
        if size != out.nbytes:
            connection.disconnect()  # the value is not read: the connection cannot be reused
            raise MessageDecodeError(f"{key} holds {size} bytes, expected {out.nbytes}")
        _read_exactly(sock, out)
        _read_exactly(sock, memoryview(bytearray(2)))
        return True

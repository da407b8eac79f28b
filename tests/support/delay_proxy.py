"""A TCP proxy that delays every byte by a set time in each direction: a broker "far away".

Run as ``python -m tests.support.delay_proxy LISTEN_PORT TARGET_PORT CONTROL_FILE``; the control
file holds the round-trip time to add, in milliseconds (half of it each way, as ``tc netem delay``
on one side of a link would add), and is re-read every 0.2 s, so one set of workers
can be measured at several distances. Order is kept: data read at t is written at t + half the delay.
Used where ``tc netem`` is not available (this machine's kernel has no sch_netem).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

_READ_BYTES = 256 * 1024


class _Delay:
    def __init__(self, control: Path) -> None:
        self._control = control
        self.seconds = 0.0

    async def follow(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                self.seconds = float(self._control.read_text().strip() or 0) / 2000.0  # half each way
            await asyncio.sleep(0.2)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: _Delay) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    try:
        while data := await reader.read(_READ_BYTES):
            queue.put_nowait((time.monotonic() + delay.seconds, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError, OSError):
        await sender


async def serve(listen_port: int, target_port: int, control: Path) -> None:
    """Relay each connection on ``listen_port`` to ``target_port``, delayed as the control file says."""
    delay = _Delay(control)
    follower = asyncio.ensure_future(delay.follow())

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay),
            _pipe(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()
    follower.cancel()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))

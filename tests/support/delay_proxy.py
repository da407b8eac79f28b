"""A TCP proxy that delays every byte by a set time in each direction: a broker "far away".

Run as ``python -m tests.support.delay_proxy LISTEN_PORT TARGET_PORT CONTROL_FILE``; the control
file holds the round-trip time to add, in milliseconds (half of it each way, as ``tc netem delay``
on one side of a link would add), and is re-read every 0.2 s, so one set of workers
can be measured at several distances. Order is kept: data read at t is written at t + half the delay.
Used where ``tc netem`` is not available (this machine's kernel has no sch_netem).

It stands in for a kernel qdisc, so it tries to add the set delay and nothing else: each
direction of a connection is a reader thread and a writer thread that sleeps to the byte's due
time with the kernel's high-resolution timer (an asyncio loop waits in ``epoll``, whose timeout
is whole milliseconds: 0.5 ms became 1 ms or more each way), and the process asks for a higher
scheduling priority (as netem's timers do not wait for a CPU; ignored where not permitted).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import socket
import sys
import threading
import time
from pathlib import Path

_READ_BYTES = 256 * 1024
_PRIORITY_NICE = -10
_PR_SET_TIMERSLACK = 29


class _Delay:
    """The one-way delay in seconds, following the control file."""

    def __init__(self, control: Path) -> None:
        self._control = control
        self.seconds = 0.0
        self.read()

    def read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.seconds = float(self._control.read_text().strip() or 0) / 2000.0  # half each way

    def follow(self) -> None:
        while True:
            time.sleep(0.2)
            self.read()


def _relay(source: socket.socket, target: socket.socket, delay: _Delay) -> None:
    """Copy ``source`` to ``target``, each read written once half the delay has passed (order kept)."""
    pending: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()

    def write() -> None:
        while True:
            with ready:
                while not pending:
                    ready.wait()
                due, data = pending.popleft()
            wait_s = due - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            if not data:
                break
            try:
                target.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while data := source.recv(_READ_BYTES):
            with ready:
                pending.append((time.monotonic() + delay.seconds, data))
                ready.notify()
    except OSError:
        pass
    with ready:
        pending.append((time.monotonic() + delay.seconds, b""))
        ready.notify()
    writer.join()


def _connection(client: socket.socket, target_port: int, delay: _Delay) -> None:
    try:
        server = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for end in (client, server):
        end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream = threading.Thread(target=_relay, args=(client, server, delay), daemon=True)
    upstream.start()
    _relay(server, client, delay)
    upstream.join()
    client.close()
    server.close()


def _prefer_this_process() -> None:
    """Sleep precisely (1 ns timer slack) and run ahead of CPU-bound neighbours, where permitted."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, _PRIORITY_NICE)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    sys.setswitchinterval(0.0002)  # a writer due now does not wait 5 ms for another thread's turn


def serve(listen_port: int, target_port: int, control: Path) -> None:
    """Relay each connection on ``listen_port`` to ``target_port``, delayed as the control file says."""
    _prefer_this_process()
    delay = _Delay(control)
    threading.Thread(target=delay.follow, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=128)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_connection, args=(client, target_port, delay), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

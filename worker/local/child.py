"""Entry point of a local worker process: it ends when the command that started it dies.

The worker asks Linux for SIGTERM on its parent's death itself, at start, instead of in a
pre-exec hook of the parent: a pre-exec hook forces a plain fork() of the parent, and a parent
with threads running (gRPC's, once the command has talked to Milvus) may leave the child broken
("epoll_wait error: Bad file descriptor"). Without the hook, Python starts the child with vfork.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent dies; exit at once if it already has (we were re-parented)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent_pid:
        sys.exit(0)


def main() -> None:
    """Run ``python -m worker.local.child PARENT_PID ARGS...``: `embedq ARGS`, tied to its parent."""
    parent_pid = int(sys.argv[1])
    exit_with_parent(parent_pid)
    sys.argv = ["embedq", *sys.argv[2:]]
    # Run by name: the CLI sits above the local run in the layers, so it is not imported here.
    runpy.run_module("worker.cli.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

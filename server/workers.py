"""`tensorgate serve --workers N`: N server processes sharing one port through SO_REUSEPORT.

The first process loads the repository (building the demo if needed), binds
with SO_REUSEPORT and starts N-1 copies of itself on the same port; the kernel
spreads incoming connections across them. A gRPC connection stays on the
process that accepted it, so this helps clients that open many connections
(perf_analyzer opens several) on hosts with spare cores; a client with one
channel still lands on one process. On a 2-core host it does not help.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["spawn_workers", "stop_workers"]

log = logging.getLogger("tensorgate.workers")

_OWN_FLAGS = ("--workers", "--grpc-port", "--http-port", "--base-port", "--model-repository", "--frontends",
              "--core-socket")


def _strip(argv: Sequence[str]) -> list[str]:
    """argv without the flags each worker gets set explicitly (both `--flag v` and `--flag=v`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _OWN_FLAGS:
            skip = True
            continue
        if arg.startswith(tuple(f + "=" for f in _OWN_FLAGS)) or arg == "--reuse-port":
            continue
        out.append(arg)
    return out


def _relay(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def spawn_workers(argv: Sequence[str], count: int, repository: Path, port: int, http_port: int = 8000,
                  timeout: float = 300, extra: Sequence[str] = ()) -> list[subprocess.Popen[bytes]]:
    """Start `count` more server processes on `port` (and `http_port`) and wait until each one serves.

    Their output is relayed to ours; a worker that fails to start is logged and stopped. Workers share the
    gRPC and HTTP ports (SO_REUSEPORT) but serve no metrics endpoint: the first process owns that port.
    ``extra``: more flags for each (--frontends: the engine core's socket).
    """
    args = _strip(argv)
    if args and args[0] == "serve":
        args = args[1:]
    children = []
    for index in range(count):
        cmd = [sys.executable, "-m", "tensorgate.server", "serve", *args, "--model-repository", str(repository),
               "--grpc-port", str(port), "--http-port", str(http_port), "--workers", "1", "--reuse-port",
               "--allow-metrics", "false", "--frontends", "1", *extra]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert child.stdout is not None
        deadline = time.monotonic() + timeout
        for line in child.stdout:
            sys.stdout.buffer.write(line)
            if b"serving inference.GRPCInferenceService" in line or time.monotonic() > deadline:
                break
        if child.poll() is not None:
            log.error("worker %d exited with %s", index + 2, child.returncode)
            continue
        threading.Thread(target=_relay, args=(child,), daemon=True).start()
        children.append(child)
        log.info("worker %d (pid %d) serves on port %d", index + 2, child.pid, port)
    return children


def stop_workers(children: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()

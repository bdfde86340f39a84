"""Servers a benchmark starts on loopback: tensorgate and the echo ceilings, each its own process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "start_echo", "start_tensorgate"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess that has printed its ready line; its output is drained in the background."""

    def __init__(self, cmd: Sequence[str], port: int, ready_marker: str, timeout: float = 300) -> None:
        self.port = port
        self.proc = subprocess.Popen(list(cmd), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd[2:4]} exited early:\n" + "".join(self.lines[-30:]))
            self.lines.append(line)
            if ready_marker in line:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd} did not start in {timeout} s")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            del self.lines[:-200]

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_tensorgate(repository: Path, extra: Sequence[str] = ()) -> ServerProcess:
    port = free_port()
    # metrics on a free port too, so several servers can run side by side
    cmd = [sys.executable, "-m", "tensorgate.server", "serve", "--model-repository", str(repository), "--grpc-port", str(port),
           "--metrics-port", "0", *extra]
    return ServerProcess(cmd, port, "serving inference.GRPCInferenceService")


def start_echo(flavor: str, like_url: str, model: str) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "tensorgate.bench.echo", "--flavor", flavor, "--port", str(port), "--like", like_url,
           "--model", model]
    return ServerProcess(cmd, port, "echo (")

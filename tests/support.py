"""Test helpers: real servers on loopback, and model repositories built with onnx.helper."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from tensorgate.server.app import InferenceServer
from tensorgate.server.demo.models import build_add_sub, build_mlp
from tensorgate.server.settings import ServerSettings
from tensorgate.server.telemetry import TelemetrySettings

REPO_ROOT = Path(__file__).resolve().parents[1]


class RunningServer:
    """An InferenceServer on its own event loop in a background thread (real gRPC on loopback)."""

    def __init__(self, repository: Path, **settings: object) -> None:
        settings.setdefault("telemetry", TelemetrySettings(metrics_port=0))  # never Triton's 8002 in tests
        self.settings = ServerSettings(grpc_port=0, exit_timeout_secs=5, **settings)  # type: ignore[arg-type]
        self.server = InferenceServer(self.settings, repository)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server-loop", daemon=True)

    def start(self) -> RunningServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(120)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(5), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.url,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )


@contextmanager
def running_server(repository: Path, **settings: object) -> Iterator[RunningServer]:
    handle = RunningServer(repository, **settings).start()
    try:
        yield handle
    finally:
        handle.stop()


def write_model(repo: Path, name: str, config: str | None, builder: str = "add_sub", version: int = 1,
                **kwargs: object) -> Path:
    """Create <repo>/<name>/<version>/model.onnx (+ config.pbtxt when given)."""
    model_dir = repo / name
    path = model_dir / str(version) / "model.onnx"
    if builder == "add_sub":
        build_add_sub(path, **kwargs)  # type: ignore[arg-type]
    elif builder == "mlp":
        build_mlp(path, **kwargs)  # type: ignore[arg-type]
    else:
        raise ValueError(builder)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_subprocess(repository: Path | None, *extra: str, env: dict[str, str] | None = None,
                     timeout: float = 180) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`tensorgate serve` in its own process; yields (process, port) once it prints its ready lines."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", str(port), *extra]
    if repository is not None:
        cmd += ["--model-repository", str(repository)]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited early:\n" + "".join(lines))
            lines.append(line)
            if "serving inference.GRPCInferenceService" in line:
                break
        else:
            raise RuntimeError("server did not start in time:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

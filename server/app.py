"""The server's lifecycle: load models, serve gRPC (+ health, reflection), drain and stop.

Order on start: load every model (in a worker thread, so the loop stays free),
bind, start, mark ready (health SERVING). On stop: mark not ready (health
NOT_SERVING) so load balancers move away, stop gRPC with a grace period so
in-flight calls finish, then drain the schedulers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from .dataplane import DataPlane, server_version
from .engine_factory import engine_settings
from .registry import ModelRegistry
from .response_cache import ResponseCache
from .settings import ServerSettings
from .telemetry.hub import Telemetry
from .transport import make_transport

__all__ = ["InferenceServer"]

log = logging.getLogger("tensorgate.app")


class InferenceServer:
    """One tensorgate server on one port."""

    def __init__(self, settings: ServerSettings, repository: Path) -> None:
        self.settings = settings
        self.registry = ModelRegistry(
            repository,
            engine_settings(settings.resolved_engine_cache_dir, settings.engine_cache_max_bytes),
            None if settings.response_cache_bytes is None else ResponseCache(settings.response_cache_bytes),
        )
        self.telemetry = Telemetry(self.registry, settings.telemetry, server_version())
        self.plane = DataPlane(self.registry, settings.strict_readiness, self.telemetry)
        self._transport = make_transport(settings.grpc_flavor, self.plane, settings.grpc_threads)
        self._serving = False
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_address}:{self.port}"

    @property
    def ready(self) -> bool:
        return self.plane.ready

    async def start(self) -> None:
        """Load the repository, bind and start serving."""
        await asyncio.get_running_loop().run_in_executor(None, self.registry.load_all)
        s = self.settings
        options = [
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            # a second server on a taken port must fail, not share it (--workers sets this)
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ]
        address = f"{s.grpc_address}:{s.grpc_port}"
        self.telemetry.start(s.grpc_address)  # tracing (a bad trace file fails here), the metrics endpoint
        self.port = await self._transport.start(address, options)
        if self.port == 0:
            self.telemetry.stop()
            raise OSError(f"cannot bind {address}")
        self._serving = True
        self.plane.accepting = True
        await self._publish_health()

    async def _publish_health(self) -> None:
        # Triton answers SERVING exactly when the server is ready, for any service name
        await self._transport.set_serving(self.ready)

    async def wait(self) -> None:
        await self._transport.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish, drain the models."""
        self.plane.accepting = False
        if not self._serving:
            return
        await self._publish_health()
        grace = self.settings.exit_timeout_secs if grace is None else grace
        await self._transport.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.telemetry.stop)  # flushes the last spans
        self._serving = False

    def summary(self) -> list[str]:
        """Startup lines: where it listens and each model's state."""
        lines = [f"tensorgate serving inference.GRPCInferenceService on {self.address}"]
        for entry in self.registry.index():
            version = entry.version or "-"
            detail = f" ({entry.reason})" if entry.reason else ""
            lines.append(f"  model {entry.name} version {version}: {entry.state}{detail}")
        return lines + self.telemetry.summary()

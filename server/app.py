"""The server's lifecycle: load models, serve gRPC (+ health, reflection), drain and stop.

Order on start: load every model (in a worker thread, so the loop stays free),
bind, start, mark ready (health SERVING). On stop (the drain): mark not ready
(health NOT_SERVING, ServerReady false) so load balancers move away, admit the
calls gRPC already received, then refuse new inference calls with UNAVAILABLE
while every admitted one (queued, batching, running, open streams') finishes, up
to the exit timeout; only then stop gRPC (server.admission says why gRPC's own
grace period is not a drain) and the schedulers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from .dataplane import DataPlane, server_version
from .engine_factory import engine_settings
from .registry import ModelRegistry
from .servicer import flush_log_summaries
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
        )
        self.telemetry = Telemetry(self.registry, settings.telemetry, server_version())
        self.plane = DataPlane(
            self.registry, settings.strict_readiness, self.telemetry, settings.max_request_bytes
        )
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
        admission = self.plane.admission
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        # what gRPC received before the signal is still being handed over: admit it until it stops coming
        await loop.run_in_executor(None, admission.wait_arrivals_quiet, 0.1, min(0.5, grace))
        admission.close()
        log.info("draining: %d admitted inference calls (requests and open streams) to finish", admission.active)
        remaining = max(0.0, grace - (time.monotonic() - started))
        drained = await loop.run_in_executor(None, admission.wait_idle, remaining)
        if drained:
            log.info("drained: every admitted request finished in %.2f s", time.monotonic() - started)
        else:
            log.warning("exit timeout (%.0f s) passed with %d inference calls still running; cancelling them",
                        grace, admission.active)
        if drained:  # late arrivals are refused with UNAVAILABLE until they stop coming (at most 1 s)
            await loop.run_in_executor(None, admission.wait_quiet, 0.1, 1.0)
        # calls other than inference (health, metadata) get a moment; nothing admitted is left to wait for
        await self._transport.stop(1.0 if drained else 0.0)
        flush_log_summaries()
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

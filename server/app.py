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
from .security.exposure import exposure_warning
from .security.metrics import AccessCollector
from .settings import ServerSettings
from .telemetry.hub import Telemetry
from .transport import TransportSecurity, make_transport

__all__ = ["InferenceServer"]

log = logging.getLogger("tensorgate.app")


class InferenceServer:
    """One tensorgate server on one port."""

    def __init__(self, settings: ServerSettings, repository: Path) -> None:
        """Raises SecurityError when certificates, tokens or restrictions cannot be used: checked here,
        before any model loads."""
        self.settings = settings
        self.policy = settings.security.policy()
        self.certificates = settings.security.grpc_certificates()
        self.metrics_certificates = settings.security.metrics_certificates(self.certificates)
        self.registry = ModelRegistry(
            repository,
            engine_settings(settings.resolved_engine_cache_dir, settings.engine_cache_max_bytes),
        )
        self.telemetry = Telemetry(self.registry, settings.telemetry, server_version())
        if self.policy.active:
            self.telemetry.extra_collectors.append(AccessCollector(self.policy))
        self.plane = DataPlane(self.registry, settings.strict_readiness, self.telemetry)
        self._transport = make_transport(
            settings.grpc_flavor, self.plane, settings.grpc_threads, TransportSecurity(self.certificates, self.policy)
        )
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
        metrics_tls = self.metrics_certificates.ssl_context if self.metrics_certificates is not None else None
        # tracing (a bad trace file fails here), the metrics endpoint
        self.telemetry.start(s.grpc_address, metrics_tls)
        self.port = await self._transport.start(address, options)
        if self.port == 0:
            self.telemetry.stop()
            raise OSError(f"cannot bind {address}")
        self._serving = True
        self.plane.accepting = True
        await self._publish_health()
        warning = exposure_warning(s.grpc_address, self.certificates is not None, self.policy)
        if warning:
            log.warning("%s", warning)

    def reload_credentials(self) -> bool:
        """SIGHUP: re-read certificates and the token file; new connections use them, open ones stay.

        Returns False when a certificate could not be used (the old one stays, the log says why).
        """
        ok = True
        for source in (self.certificates, self.metrics_certificates):
            if source is not None:
                ok = source.reload() and ok
        self.policy.reload()
        return ok

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
        tls = " (TLS, client certificates required)" if self.certificates and self.certificates.mutual else (
            " (TLS)" if self.certificates else "")
        lines = [f"tensorgate serving inference.GRPCInferenceService on {self.address}{tls}"]
        for entry in self.registry.index():
            version = entry.version or "-"
            detail = f" ({entry.reason})" if entry.reason else ""
            lines.append(f"  model {entry.name} version {version}: {entry.state}{detail}")
        return lines + self.policy.describe() + self.telemetry.summary()

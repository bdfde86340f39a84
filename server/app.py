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
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clients.pb import grpc_service_pb2 as pb
from clients.pb import grpc_service_pb2_grpc as pb_grpc

from .dataplane import DataPlane
from .registry import ModelRegistry
from .servicer import InferenceServicer
from .settings import ServerSettings

__all__ = ["InferenceServer"]

log = logging.getLogger("tensorgate.app")


class _ReadinessHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1.Health that, like Triton, ignores the service name: SERVING iff ready."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> object:
        return await super().Check(health_pb2.HealthCheckRequest(service=""), context)


class InferenceServer:
    """One tensorgate server on one port."""

    def __init__(self, settings: ServerSettings, repository: Path) -> None:
        self.settings = settings
        self.registry = ModelRegistry(repository)
        self.plane = DataPlane(self.registry, settings.strict_readiness)
        self._server: grpc.aio.Server | None = None
        self._health = _ReadinessHealth()
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
        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.plane), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (
            pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server)
        self.port = server.add_insecure_port(f"{s.grpc_address}:{s.grpc_port}")
        if self.port == 0:
            raise OSError(f"cannot bind {s.grpc_address}:{s.grpc_port}")
        await server.start()
        self._server = server
        self.plane.accepting = True
        await self._publish_health()

    async def _publish_health(self) -> None:
        # Triton answers SERVING exactly when the server is ready, for any service name
        status = (
            health_pb2.HealthCheckResponse.SERVING if self.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish, drain the models."""
        self.plane.accepting = False
        if self._server is None:
            return
        await self._publish_health()
        grace = self.settings.exit_timeout_secs if grace is None else grace
        await self._server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
        self._server = None

    def summary(self) -> list[str]:
        """Startup lines: where it listens and each model's state."""
        lines = [f"tensorgate serving inference.GRPCInferenceService on {self.address}"]
        for entry in self.registry.index():
            version = entry.version or "-"
            detail = f" ({entry.reason})" if entry.reason else ""
            lines.append(f"  model {entry.name} version {version}: {entry.state}{detail}")
        return lines

"""The two gRPC server flavours behind one async interface: grpc.aio and the thread-pool grpc.server.

Both serve the same DataPlane, grpc.health.v1.Health (SERVING exactly when the
server is ready, whatever the service name, as Triton does) and server
reflection. Which flavour serves best is measured (bench/throughput.py) and
chosen with ``--grpc-flavor``.
"""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .dataplane import DataPlane

__all__ = ["AioTransport", "ThreadTransport", "Transport", "make_transport"]

_SERVICES = (
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def _status(serving: bool) -> Any:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


class Transport(Protocol):
    async def start(self, address: str, options: list[tuple[str, Any]]) -> int: ...

    async def set_serving(self, serving: bool) -> None: ...

    async def wait(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class _AioHealth(health.aio.HealthServicer):  # type: ignore[misc]
    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> object:
        return await super().Check(health_pb2.HealthCheckRequest(service=""), context)


class _SyncHealth(health.HealthServicer):  # type: ignore[misc]
    def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> object:
        return super().Check(health_pb2.HealthCheckRequest(service=""), context)


class AioTransport:
    """grpc.aio: handlers are coroutines on one event loop; workers resolve futures once per batch."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._health = _AioHealth()
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str, options: list[tuple[str, Any]]) -> int:
        from .servicer import InferenceServicer

        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self._plane), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_SERVICES, server)
        port = server.add_insecure_port(address)
        if port:
            await server.start()
            self._server = server
        return port

    async def set_serving(self, serving: bool) -> None:
        await self._health.set("", _status(serving))

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)


class ThreadTransport:
    """The thread-pool grpc.server: each call runs on a pool thread and blocks until its batch is done."""

    def __init__(self, plane: DataPlane, threads: int) -> None:
        self._plane = plane
        self._threads = threads
        self._health = _SyncHealth()
        self._server: grpc.Server | None = None

    async def start(self, address: str, options: list[tuple[str, Any]]) -> int:
        from .servicer_sync import SyncInferenceServicer

        pool = futures.ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="tg-grpc")
        server = grpc.server(pool, options=options, maximum_concurrent_rpcs=None)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(SyncInferenceServicer(self._plane), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_SERVICES, server)
        port = server.add_insecure_port(address)
        if port:
            server.start()
            self._server = server
        return port

    async def set_serving(self, serving: bool) -> None:
        self._health.set("", _status(serving))

    async def wait(self) -> None:
        if self._server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._server.wait_for_termination)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            done = self._server.stop(grace)
            await asyncio.get_running_loop().run_in_executor(None, done.wait)


def make_transport(flavor: str, plane: DataPlane, threads: int) -> Transport:
    if flavor == "thread":
        return ThreadTransport(plane, threads)
    if flavor == "aio":
        return AioTransport(plane)
    raise ValueError(f"unknown gRPC flavour '{flavor}'; expected aio or thread")

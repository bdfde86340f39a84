"""The server's lifecycle: bind, load models, serve gRPC (+ health, reflection) and HTTP, drain and stop.

Order on start: bind every listening port (gRPC, HTTP, metrics) so a taken one
fails at once with one line naming it and its flag, load every model (in a
worker thread, so the loop stays free), start serving, mark ready (health
SERVING). On stop (the drain): mark not ready (health NOT_SERVING, ServerReady
false) so load balancers move away, admit the calls gRPC already received, then
refuse new inference calls with UNAVAILABLE while every admitted one (queued,
batching, running, open streams', REST requests) finishes, up to the exit timeout;
only then stop gRPC and HTTP (server.admission says why gRPC's own grace period is
not a drain) and the schedulers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .dataplane import DataPlane, server_version
from .engine_factory import engine_settings
from .http import Authorize, HttpEndpoint, policy_authorizer
from .lifecycle import ModelControl
from .registry import ModelRegistry
from .response_cache import ResponseCache
from .security.exposure import exposure_warning
from .security.metrics import AccessCollector
from .servicer import flush_log_summaries
from .settings import ServerSettings
from .shm_store import SharedMemory
from .telemetry.hub import Telemetry
from .transport import TransportSecurity, make_transport

if TYPE_CHECKING:
    from .core.client import EngineCoreClient

__all__ = ["InferenceServer", "PortError"]

log = logging.getLogger("tensorgate.app")


class PortError(OSError):
    """A listening port cannot be bound; the message names the address and the flag to change."""


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or "the address is in use or not available"


def _probe(host: str, port: int) -> None:
    """Bind a plain socket where gRPC is about to bind: the clean errno, before grpc core logs its own line.

    Raises:
        OSError: the address cannot be bound.
    """
    host = host.strip("[]")
    family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc core binds
        sock.bind(where)


class InferenceServer:
    """One tensorgate server: gRPC, HTTP and metrics endpoints over one data plane.

    Args:
        settings: the server settings.
        repository: the model repository (it may not exist yet when ``bind`` runs: the demo is built after).
        http_ssl: serve HTTPS with this context; default: the gRPC port's certificates when TLS is on.
        http_authorize: the HTTP access-control hook (``server.http.Authorize``); default: the access policy
            of the gRPC flags in Triton's HTTP form.

    Raises:
        SecurityError: certificates, tokens or restrictions cannot be used (checked here, before any model loads).
    """

    def __init__(self, settings: ServerSettings, repository: Path, http_ssl: ssl.SSLContext | None = None,
                 http_authorize: Authorize | None = None) -> None:
        self.settings = settings
        self.policy = settings.security.policy()
        self.certificates = settings.security.grpc_certificates()
        self.metrics_certificates = settings.security.metrics_certificates(self.certificates)
        # --engine-core process: schedulers and engines live in a child process, started in start()
        self.core: EngineCoreClient | None = None
        self.before_core_stop: Callable[[], None] | None = None  # --frontends: let the other front ends drain
        if settings.engine_core == "process":
            from .core.client import EngineCoreClient, core_log_level, core_reader

            self.core = EngineCoreClient(core_log_level(), listen=settings.frontends > 1,
                                         connect=settings.core_socket, reader=core_reader())
        self.registry = ModelRegistry(
            repository,
            engine_settings(settings.resolved_engine_cache_dir, settings.engine_cache_max_bytes),
            strict_config=settings.strict_model_config,
            unload_timeout=settings.model_unload_timeout_secs,
            response_cache=None if settings.response_cache_bytes is None else ResponseCache(settings.response_cache_bytes),
            loader=self.core.load_version if self.core is not None else None,
        )
        self.control = ModelControl(
            self.registry, settings.model_control_mode, settings.load_models, settings.repository_poll_secs,
            settings.model_load_max_bytes,
        )
        self.telemetry = Telemetry(self.registry, settings.telemetry, server_version())
        if self.policy.active:
            self.telemetry.extra_collectors.append(AccessCollector(self.policy))
        self.plane = DataPlane(self.registry, settings.strict_readiness, self.telemetry,
                               shm=SharedMemory(settings.allow_client_shm), control=self.control,
                               max_request_bytes=settings.max_request_bytes)
        self._transport = make_transport(
            settings.grpc_flavor, self.plane, settings.grpc_threads, TransportSecurity(self.certificates, self.policy)
        )
        if http_ssl is None and self.certificates is not None:
            http_ssl = self.certificates.ssl_context()
        if http_authorize is None and self.policy.active:
            http_authorize = policy_authorizer(self.policy.for_http())
        self.http = (
            HttpEndpoint(self.plane, http_ssl, http_authorize, settings.max_receive_message_bytes)
            if settings.allow_http
            else None
        )
        self._bound = False
        self._serving = False
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_address}:{self.port}"

    @property
    def ready(self) -> bool:
        return self.plane.ready

    async def bind(self) -> None:
        """Bind every listening port before anything slow happens.

        Raises:
            PortError: a port cannot be bound (one line: the address, the flag, the reason).
        """
        if self._bound:
            return
        s = self.settings
        options = [
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            # a second server on a taken port must fail, not share it (--workers sets this)
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ]
        if s.max_connection_age_secs > 0:
            # GOAWAY after this age: DNS-balancing clients reconnect and re-resolve; calls still
            # running get the exit timeout to finish before the connection is cut
            options += [
                ("grpc.max_connection_age_ms", int(s.max_connection_age_secs * 1000)),
                ("grpc.max_connection_age_grace_ms", int(s.exit_timeout_secs * 1000)),
            ]
        address = f"{s.grpc_address}:{s.grpc_port}"
        reason = "the address is in use or not available"
        try:
            if s.grpc_port and not s.reuse_port:
                _probe(s.grpc_address, s.grpc_port)
        except OSError as exc:
            reason = _why(exc)
        else:
            self.port = await self._transport.bind(address, options)
        if self.port == 0:
            raise PortError(f"cannot bind the gRPC port {address} (--grpc-port): {reason}")
        try:
            if self.http is not None:
                where = f"{s.resolved_http_address}:{s.http_port}"
                try:
                    self.http.bind(s.resolved_http_address, s.http_port, s.reuse_port)
                except OSError as exc:
                    raise PortError(f"cannot bind the HTTP port {where} (--http-port; --allow-http false turns "
                                    f"HTTP off): {_why(exc)}") from None
            t = s.telemetry
            try:
                self.telemetry.bind(s.grpc_address, self._metrics_tls)
            except OSError as exc:
                where = f"{t.metrics_address or s.grpc_address}:{t.metrics_port}"
                raise PortError(f"cannot bind the metrics port {where} (--metrics-port; --allow-metrics false "
                                f"turns metrics off): {_why(exc)}") from None
        except PortError:
            await self._release()
            raise
        self._bound = True

    @property
    def _metrics_tls(self) -> Callable[[], ssl.SSLContext] | None:
        return self.metrics_certificates.ssl_context if self.metrics_certificates is not None else None

    async def _release(self) -> None:
        """Close what ``bind`` opened (a later port failed)."""
        await self._transport.stop(0)
        if self.http is not None:
            await self.http.stop()
        self.telemetry.stop()

    async def start(self) -> None:
        """Bind (unless done), load the repository, start serving."""
        await self.bind()
        try:
            if self.core is not None:
                self.core.loop = asyncio.get_running_loop()  # the loop reader's loop (TENSORGATE_CORE_READER)
                await asyncio.get_running_loop().run_in_executor(None, self.core.start)
            await asyncio.get_running_loop().run_in_executor(None, self.control.start)  # loads per the mode
            # tracing (a bad trace file fails here), metrics
            self.telemetry.start(self.settings.grpc_address, self._metrics_tls)
        except BaseException:
            await asyncio.get_running_loop().run_in_executor(None, self.control.stop)
            await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
            self._stop_core()
            await self._release()
            raise
        await self._transport.start()
        if self.http is not None:
            await self.http.start(self.settings.exit_timeout_secs)
        self._serving = True
        self.plane.accepting = True
        await self._publish_health()
        warning = exposure_warning(self.settings.grpc_address, self.certificates is not None, self.policy)
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
        stops = [self._transport.stop(1.0 if drained else 0.0)] + ([self.http.stop()] if self.http is not None else [])
        await asyncio.gather(*stops)
        flush_log_summaries()
        await asyncio.get_running_loop().run_in_executor(None, self.control.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
        await asyncio.get_running_loop().run_in_executor(None, self._stop_core)
        await asyncio.get_running_loop().run_in_executor(None, self.telemetry.stop)  # flushes the last spans
        self.plane.shm.close()  # nothing stays mapped or open
        self._serving = False

    def _stop_core(self) -> None:
        if self.before_core_stop is not None:
            self.before_core_stop()
        if self.core is not None:
            self.core.stop()  # the core exits (when this front end started it); the arenas are unmapped

    def summary(self) -> list[str]:
        """Startup lines: where it listens and each model's state."""
        tls = " (TLS, client certificates required)" if self.certificates and self.certificates.mutual else (
            " (TLS)" if self.certificates else "")
        lines = [f"tensorgate serving inference.GRPCInferenceService on {self.address}{tls}"]
        if self.http is not None:
            lines.append(f"tensorgate serving KServe v2 REST (Triton HTTP) on {self.http.url}")
        for entry in self.registry.index():
            version = entry.version or "-"
            detail = f" ({entry.reason})" if entry.reason else ""
            lines.append(f"  model {entry.name} version {version}: {entry.state}{detail}")
        return lines + self.policy.describe() + self.telemetry.summary()

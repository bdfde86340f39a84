"""Server settings: one frozen dataclass, filled from CLI flags or TENSORGATE_* environment variables."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .security.options import SecuritySettings
from .telemetry.options import TelemetrySettings

__all__ = [
    "DEFAULT_ENGINE_CACHE_BYTES", "ENGINE_CORES", "MAX_MESSAGE_BYTES", "ServerSettings", "default_cache_dir",
    "default_engine_core",
]

MAX_MESSAGE_BYTES = 2**31 - 1  # INT32_MAX: Triton's limit, and protobuf's
DEFAULT_ENGINE_CACHE_BYTES = 20 * 2**30  # engines.cache.DEFAULT_MAX_BYTES (not imported: the CLI stays light)


def default_cache_dir() -> Path:
    """Per-user cache folder: $TENSORGATE_CACHE_DIR, else $XDG_CACHE_HOME/tensorgate, else ~/.cache/tensorgate.

    A container user with no home (no $HOME, no passwd entry) gets <temp dir>/tensorgate-<uid> instead of a
    crash; a home that cannot be written is the engine cache's business (it is then read, and builds go to a
    scratch folder).
    """
    explicit = os.environ.get("TENSORGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # "Could not determine home directory"
            return Path(tempfile.gettempdir()) / f"tensorgate-{os.getuid()}"
    return Path(base) / "tensorgate"


ENGINE_CORES = ("inline", "process")


def default_engine_core() -> str:
    """$TENSORGATE_ENGINE_CORE when set, else inline (the faster one on small hosts: README)."""
    return os.environ.get("TENSORGATE_ENGINE_CORE", "").strip().lower() or "inline"


@dataclass(frozen=True)
class ServerSettings:
    """Everything `tensorgate serve` can be told.

    Args:
        model_repository: the repository to serve; None serves the built-in demo repository.
        grpc_address: interface to bind (0.0.0.0 in containers).
        grpc_port: port to bind; 0 picks a free one.
        allow_http: serve KServe v2 REST / Triton's HTTP protocol too (Triton's --allow-http).
        http_address: its interface; None = the gRPC address.
        http_port: its port (Triton's 8000); 0 picks a free one.
        max_send_message_bytes / max_receive_message_bytes: gRPC message limits.
        max_request_bytes: the most bytes one request's inputs may take once decoded (BYTES
            elements cost more in memory than on the wire); checked before allocating.
        cache_dir: where the demo repository (and later engine caches) are built.
        strict_readiness: ServerReady only when every model is ready (Triton's default);
            otherwise a model that failed to load does not make the server unready.
        exit_timeout_secs: how long shutdown waits for in-flight requests.
        log_verbose: verbose logging level (0 = off).
        reuse_port: bind with SO_REUSEPORT so several processes share the port (--workers).
        grpc_flavor: "aio" (grpc.aio, one event loop) or "thread" (the thread-pool grpc.server).
        grpc_threads: pool size of the thread flavour (the most calls it handles at once).
        engine_cache_dir: where precision artifacts and built engines are cached
            (default <cache_dir>/engines).
        engine_cache_max_bytes: the engine cache's size bound; least recently used entries go first.
        telemetry: traces (--trace-config), the metrics endpoint and log format (server.telemetry).
        allow_client_shm: let clients register system shared-memory regions (off by default: a region lets
            a client read and write shm objects the server's user can open).
        security: TLS, restricted groups, bearer tokens, metrics TLS (server.security).
        max_connection_age_secs: close each client connection (GOAWAY, in-flight calls finish) after
            this long, so clients balancing over DNS re-resolve and reach replicas added since; 0 = never.
        model_control_mode: none | poll | explicit (Triton's --model-control-mode).
        load_models: explicit mode: the models loaded at start ("*": all; --load-model).
        repository_poll_secs: poll mode: seconds between repository scans.
        strict_model_config: config fields without effect fail the load instead of warning.
        model_unload_timeout_secs: how long an unloading or replaced version's in-flight requests
            (queued ones included) may take before the rest fail with UNAVAILABLE.
        model_load_max_bytes: the most file-override bytes one RepositoryModelLoad may carry.
        response_cache_bytes: the response cache's size (--cache-config local,size=BYTES); None: no cache.
        engine_core: "inline" (schedulers and engines in this process) or "process" (in one engine core
            child process; tensors cross through shared memory). Default: $TENSORGATE_ENGINE_CORE, else inline.
    """

    model_repository: Path | None = None
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    allow_http: bool = True
    http_address: str | None = None
    http_port: int = 8000
    max_send_message_bytes: int = MAX_MESSAGE_BYTES
    max_receive_message_bytes: int = MAX_MESSAGE_BYTES
    max_request_bytes: int = MAX_MESSAGE_BYTES
    cache_dir: Path | None = None
    strict_readiness: bool = False
    exit_timeout_secs: float = 30.0
    log_verbose: int = 0
    reuse_port: bool = False
    grpc_flavor: str = "aio"
    grpc_threads: int = 64
    engine_cache_dir: Path | None = None
    engine_cache_max_bytes: int = DEFAULT_ENGINE_CACHE_BYTES
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    allow_client_shm: bool = False
    security: SecuritySettings = field(default_factory=SecuritySettings)
    max_connection_age_secs: float = 0.0
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ()
    repository_poll_secs: float = 15.0
    strict_model_config: bool = False
    model_unload_timeout_secs: float = 30.0
    model_load_max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.engine_core not in ENGINE_CORES:
            raise ValueError(f"engine core {self.engine_core!r} is not one of {', '.join(ENGINE_CORES)} "
                             "(--engine-core / TENSORGATE_ENGINE_CORE)")
        if self.frontends < 1 or (self.frontends > 1 and self.engine_core != "process"):
            raise ValueError("--frontends N needs N >= 1, and --engine-core process when N > 1")

    @property
    def resolved_http_address(self) -> str:
        return self.http_address or self.grpc_address
    response_cache_bytes: int | None = None
    engine_core: str = field(default_factory=lambda: default_engine_core())
    frontends: int = 1
    core_socket: str = ""

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or default_cache_dir()

    @property
    def resolved_engine_cache_dir(self) -> Path:
        return self.engine_cache_dir or self.resolved_cache_dir / "engines"

"""Telemetry settings: `--trace-config` items (Triton's syntax), metrics and log flags.

Kept free of OpenTelemetry and prometheus imports so `tensorgate --help` and
ServerSettings stay light; the pieces that need those libraries import them
only when they are switched on.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT_OTLP_GRPC_ENDPOINT",
    "DEFAULT_OTLP_HTTP_URL",
    "LOG_FORMATS",
    "TRACE_LEVELS",
    "TelemetrySettings",
    "TraceConfig",
    "add_telemetry_flags",
    "parse_trace_config",
    "telemetry_settings_from_args",
]

TRACE_LEVELS = ("OFF", "TIMESTAMPS")
LOG_FORMATS = ("default", "ISO8601", "json")
DEFAULT_OTLP_HTTP_URL = "http://localhost:4318/v1/traces"  # Triton's default
DEFAULT_OTLP_GRPC_ENDPOINT = "localhost:4317"
_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class TraceConfig:
    """The startup trace configuration, as `--trace-config` items build it.

    Args:
        level: "OFF" (default, Triton's) or "TIMESTAMPS".
        rate: trace one request in ``rate`` (Triton's default 1000; 0 = only requests that carry a
            W3C traceparent).
        count: how many requests to trace before stopping; -1 = no limit.
        url: an OTLP endpoint: ``http(s)://...`` is OTLP/HTTP (Triton's exporter), ``grpc://host:port``
            OTLP/gRPC. Empty with no ``file``: OTLP/HTTP to localhost:4318.
        protocol: "grpc" or "http/protobuf" to override what the url's scheme says.
        file: a file that receives one OTLP-JSON ExportTraceServiceRequest per line.
        resource: extra resource attributes (service.name defaults to "tensorgate").
        bsp_*: batch span processor sizes (None: OTEL_BSP_* or the SDK defaults, which are Triton's).
    """

    level: str = "OFF"
    rate: int = 1000
    count: int = -1
    url: str = ""
    protocol: str = ""
    file: str = ""
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int | None = None
    bsp_schedule_delay: int | None = None
    bsp_max_export_batch_size: int | None = None

    @property
    def otlp_protocol(self) -> str:
        """"grpc", "http/protobuf", or "" when spans go only to a file."""
        if self.protocol:
            return self.protocol
        if self.url.startswith("grpc://"):
            return "grpc"
        if self.url or not self.file:
            return "http/protobuf"
        return ""

    @property
    def otlp_endpoint(self) -> str:
        if self.otlp_protocol == "grpc":
            url = self.url.removeprefix("grpc://")
            return url or DEFAULT_OTLP_GRPC_ENDPOINT
        return self.url or DEFAULT_OTLP_HTTP_URL


def _int(key: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"trace setting '{key}' must be an integer, got '{text}'") from None
    if value < minimum:
        raise ValueError(f"trace setting '{key}' must be >= {minimum}, got {value}")
    return value


def _level(text: str) -> str:
    level = text.strip().upper()
    if level == "TENSORS":
        raise ValueError("trace level TENSORS is not supported in opentelemetry mode (as in Triton)")
    if level not in TRACE_LEVELS:
        raise ValueError(f"unknown trace level '{text}'; expected one of {', '.join(TRACE_LEVELS)}")
    return level


def _apply(config: TraceConfig, item: str) -> TraceConfig:
    mode, _, setting = item.partition(",") if "," in item.split("=", 1)[0] else ("", "", item)
    key, sep, value = setting.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"--trace-config '{item}': expected [mode,]setting=value")
    if mode == "triton":
        raise ValueError("Triton's own trace mode is not supported; use mode=opentelemetry with "
                         "--trace-config opentelemetry,file=PATH for a local file")
    if mode not in ("", "opentelemetry"):
        raise ValueError(f"--trace-config '{item}': unknown trace mode '{mode}'")
    if not mode:
        if key == "mode":
            if value.strip().lower() != "opentelemetry":
                raise ValueError(f"trace mode '{value}' is not supported; tensorgate traces in opentelemetry mode")
            return config
        if key == "level":
            return replace(config, level=_level(value))
        if key == "rate":
            return replace(config, rate=_int(key, value, 0))
        if key == "count":
            return replace(config, count=_int(key, value, -1))
        if key in ("file", "log-frequency", "log_frequency"):
            raise ValueError(f"--trace-config {key}=...: Triton-mode setting; use opentelemetry,file=PATH")
        raise ValueError(f"--trace-config '{item}': unknown setting '{key}'")
    if key == "url":
        return replace(config, url=value)
    if key == "file":
        return replace(config, file=value)
    if key == "protocol":
        if value not in _PROTOCOLS:
            raise ValueError(f"OTLP protocol '{value}' unknown; expected one of {', '.join(_PROTOCOLS)}")
        return replace(config, protocol=value)
    if key == "resource":
        name, eq, attr = value.partition("=")
        if not eq or not name:
            raise ValueError(f"--trace-config '{item}': expected opentelemetry,resource=KEY=VALUE")
        return replace(config, resource=(*config.resource, (name, attr)))
    if key == "bsp_max_queue_size":
        return replace(config, bsp_max_queue_size=_int(key, value, 1))
    if key == "bsp_schedule_delay":
        return replace(config, bsp_schedule_delay=_int(key, value, 1))
    if key == "bsp_max_export_batch_size":
        return replace(config, bsp_max_export_batch_size=_int(key, value, 1))
    raise ValueError(f"--trace-config '{item}': unknown opentelemetry setting '{key}'")


def parse_trace_config(items: tuple[str, ...] | list[str]) -> TraceConfig:
    """Fold `--trace-config` items into a TraceConfig; raises ValueError naming the bad item."""
    config = TraceConfig()
    for item in items:
        config = _apply(config, item)
    queue, batch = config.bsp_max_queue_size, config.bsp_max_export_batch_size
    if queue is not None and batch is not None and batch > queue:
        raise ValueError(f"bsp_max_export_batch_size ({batch}) must not exceed bsp_max_queue_size ({queue})")
    return config


@dataclass(frozen=True)
class TelemetrySettings:
    """Tracing, metrics and logging settings of one server.

    Args:
        trace_config: `--trace-config` items, Triton's syntax (see TraceConfig).
        allow_metrics: serve Prometheus metrics over HTTP.
        metrics_port: its port (Triton's 8002); 0 picks a free one.
        metrics_address: its interface; None = the gRPC address.
        allow_gpu_metrics / allow_cpu_metrics: include nv_gpu_* (NVML) / nv_cpu_* families.
        log_format: "default", "ISO8601" (Triton's two) or "json" (one object per line).
        log_file: write the log there instead of stderr.
        log_dir: the folder the LogSettings RPC may put ``log_file`` in ("" = it may not change it).
        log_info / log_warning / log_error: Triton's per-severity switches.
    """

    trace_config: tuple[str, ...] = ()
    allow_metrics: bool = True
    metrics_port: int = 8002
    metrics_address: str | None = None
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    log_format: str = "default"
    log_file: str = ""
    log_dir: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True

    @property
    def trace(self) -> TraceConfig:
        return parse_trace_config(self.trace_config)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TENSORGATE_{name}", default)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _trace_item(text: str) -> str:
    try:
        _apply(TraceConfig(), text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_telemetry_flags(p: argparse.ArgumentParser) -> None:
    """The `serve` flags for traces, metrics and logs (Triton's names where Triton has them)."""
    g = p.add_argument_group("observability")
    g.add_argument(
        "--trace-config", action="append", type=_trace_item, metavar="[MODE,]SETTING=VALUE",
        default=_env("TRACE_CONFIG", "").split(),
        help="tracing, Triton's syntax, repeatable: level=OFF|TIMESTAMPS, rate=N (1 in N; 0 = only requests "
        "with a W3C traceparent), count=N, mode=opentelemetry, opentelemetry,url=URL (http(s):// OTLP/HTTP, "
        "grpc://host:port OTLP/gRPC; needs tensorgate[otlp]), opentelemetry,file=PATH (OTLP-JSON lines, no "
        "collector needed), opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_max_queue_size=N ...",
    )
    g.add_argument("--allow-metrics", type=_bool, default=_bool(_env("ALLOW_METRICS", "true")), metavar="BOOL",
                   help="serve Prometheus metrics on http://<metrics address>:<metrics port>/metrics (default true)")
    g.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", "-1")),
                   help="metrics port (default 8002, or --base-port + 2); a port that cannot be bound stops the "
                   "start unless --allow-metrics false")
    g.add_argument("--metrics-address", default=os.environ.get("TENSORGATE_METRICS_ADDRESS"),
                   help="metrics interface (default: the --grpc-address)")
    g.add_argument("--allow-gpu-metrics", type=_bool, default=_bool(_env("ALLOW_GPU_METRICS", "true")),
                   metavar="BOOL", help="nv_gpu_* metrics through NVML when a GPU is present (default true)")
    g.add_argument("--allow-cpu-metrics", type=_bool, default=_bool(_env("ALLOW_CPU_METRICS", "true")),
                   metavar="BOOL", help="nv_cpu_* host CPU and memory metrics (default true)")
    g.add_argument("--log-format", choices=LOG_FORMATS, default=_env("LOG_FORMAT", "default"),
                   help="log line format: default, ISO8601 (Triton's) or json (one object per line)")
    g.add_argument("--log-file", default=_env("LOG_FILE", ""), help="write the log to this file (default stderr)")
    g.add_argument("--log-dir", default=_env("LOG_DIR", ""),
                   help="the folder in which the LogSettings RPC may create or switch to a log file (a plain "
                   "name, directly inside; no symlinks followed); without it clients cannot move the log")
    for name in ("info", "warning", "error"):
        g.add_argument(f"--log-{name}", type=_bool, default=_bool(_env(f"LOG_{name.upper()}", "true")),
                       metavar="BOOL", help=f"log {name} messages (default true)")


def telemetry_settings_from_args(args: Any) -> TelemetrySettings:
    """The settings the flags give; exits with the reason when the --trace-config items do not fit together."""
    try:
        parse_trace_config(tuple(args.trace_config or ()))
    except ValueError as exc:
        raise SystemExit(f"tensorgate serve: error: --trace-config: {exc}") from None
    return TelemetrySettings(
        trace_config=tuple(args.trace_config or ()),
        allow_metrics=args.allow_metrics,
        metrics_port=8002 if args.metrics_port < 0 else args.metrics_port,
        metrics_address=args.metrics_address,
        allow_gpu_metrics=args.allow_gpu_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        log_format=args.log_format,
        log_file=args.log_file,
        log_dir=args.log_dir,
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
    )

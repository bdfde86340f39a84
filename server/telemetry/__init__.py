"""Observability: OpenTelemetry traces, Prometheus metrics, structured logs, drift monitoring.

Modules (the ones that need OpenTelemetry or prometheus_client import them
only when they are used, so this package stays light to import)::

    options         TelemetrySettings, --trace-config parsing, the serve flags
    hub             Telemetry: one server's tracer, metrics endpoint and settings RPCs
    tracing         sampling and the request-path hooks (begin, end, record_batch)
    trace_settings  global and per-model trace settings, the TraceSetting RPC
    spans           Triton's span tree and the batch span, as finished ReadableSpans
    exporters       batch span processors, OTLP (gRPC/HTTP) exporters
    file_exporter   OTLP-JSON lines, the collector's file format
    metrics         nv_inference_*, nv_cpu_*, nv_gpu_*, engine cache collectors
    metrics_http    the /metrics endpoint
    logs            structured log formats, the LogSettings RPC
    drift           per-model output statistics and PSI against a reference
    drift_metrics   the drift monitors' Prometheus families
"""

from __future__ import annotations

from .options import TelemetrySettings, TraceConfig, parse_trace_config

__all__ = ["TelemetrySettings", "TraceConfig", "parse_trace_config"]

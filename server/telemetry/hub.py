"""One server's telemetry: its tracer, its metrics endpoint, and the two settings RPCs.

The app creates one ``Telemetry`` next to its registry, binds its metrics port
with the other ports before any model loads, starts it once gRPC is bound and stops it after the models drained (so the last spans are
flushed). Transports reach it through the data plane: ``plane.telemetry.tracer``
on the request path, ``trace_setting`` and ``log_settings`` for the RPCs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .logs import LOGS
from .options import TelemetrySettings
from .tracing import RequestTracer

if TYPE_CHECKING:
    import ssl

    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

    from ..registry import ModelRegistry
    from .metrics_http import MetricsServer

__all__ = ["Telemetry"]

log = logging.getLogger("tensorgate.telemetry")


class _TraceCollector:
    """The trace pipeline's own counters: records exported, and dropped because the queue was full."""

    def __init__(self, tracer: RequestTracer) -> None:
        self._tracer = tracer

    def collect(self) -> Iterator[Metric]:
        from .metrics import family

        pipeline = self._tracer.pipeline
        for name, doc, value in (
            ("tensorgate_trace_records_exported_total", "Traced requests and batches handed to the exporters",
             pipeline.exported if pipeline else 0),
            ("tensorgate_trace_records_dropped_total", "Traced requests and batches dropped: the trace queue was full",
             pipeline.dropped if pipeline else 0),
        ):
            metric = family(name, doc, "counter")
            metric.add_sample(name, {}, value)
            yield metric


class Telemetry:
    """Tracing, metrics and log settings of one server."""

    def __init__(self, registry: ModelRegistry, settings: TelemetrySettings | None = None, version: str = "") -> None:
        self.settings = settings or TelemetrySettings()
        self.registry = registry
        self.tracer = RequestTracer(self.settings.trace, version)  # raises ValueError on a bad --trace-config
        self.metrics: MetricsServer | None = None
        self.gpus = 0
        self.extra_collectors: list[Collector] = []  # sources owned elsewhere (server.security's refusals)

    def collectors(self) -> list[Collector]:
        """Every metrics source this server exports."""
        from .drift_metrics import DriftCollector
        from .metrics import (
            EngineCacheCollector,
            GpuCollector,
            HostCollector,
            ModelCollector,
            process_collector,
        )

        out: list[Collector] = [ModelCollector(self.registry), EngineCacheCollector(), DriftCollector(self.registry),
                                _TraceCollector(self.tracer), *self.extra_collectors]
        if self.settings.allow_cpu_metrics:
            out.append(HostCollector())
            process = process_collector()
            if process is not None:
                out.append(process)
        if self.settings.allow_gpu_metrics:
            gpu = GpuCollector()
            self.gpus = gpu.gpus
            if gpu.gpus:
                out.append(gpu)
        return out

    def bind(self, default_address: str, metrics_tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        """Bind the metrics endpoint now, before any model loads (unless --allow-metrics false); HTTPS when
        ``metrics_tls`` gives the server-side context of each new connection.

        Raises:
            OSError: the metrics port cannot be bound; the app turns it into one line naming the flag.
        """
        if not self.settings.allow_metrics or self.metrics is not None:
            return
        from .metrics_http import MetricsServer

        server = MetricsServer(self.collectors())
        server.bind(self.settings.metrics_address or default_address, self.settings.metrics_port, metrics_tls)
        self.metrics = server

    def start(self, grpc_address: str, metrics_tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        """Start tracing and serve the metrics endpoint (bound here unless ``bind`` ran).

        Raises:
            OSError: the trace file cannot be opened, or the metrics port cannot be bound.
        """
        self.tracer.start()
        self.bind(grpc_address, metrics_tls)
        if self.metrics is not None:
            self.metrics.serve()

    def stop(self) -> None:
        """Flush the last spans and close the endpoint."""
        self.tracer.shutdown()
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def summary(self) -> list[str]:
        lines = []
        if self.metrics is not None:
            lines.append(f"  metrics: {self.metrics.url}" + (f" ({self.gpus} GPU(s) through NVML)" if self.gpus else ""))
        if self.tracer.active or self.settings.trace_config:
            lines.append(f"  {self.tracer.describe()}")
        return lines

    # ---- RPCs ----------------------------------------------------------------------------

    def trace_setting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        """TraceSetting, globally or for one model (a tensorgate extension in opentelemetry mode)."""

        def known(name: str) -> bool:
            try:
                return any(mv.ready for mv in self.registry.versions(name))
            except Exception:
                return False

        return self.tracer.settings.rpc(request, known)

    def log_settings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        return LOGS.rpc(request)

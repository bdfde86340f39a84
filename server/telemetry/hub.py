"""One server's telemetry: its tracer, its metrics endpoint, and the two settings RPCs.

The app creates one ``Telemetry`` next to its registry, starts it once the gRPC
port is bound and stops it after the models drained (so the last spans are
flushed). Transports reach it through the data plane: ``plane.telemetry.tracer``
on the request path, ``trace_setting`` and ``log_settings`` for the RPCs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .logs import LOGS
from .options import TelemetrySettings
from .tracing import RequestTracer

if TYPE_CHECKING:
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
        self.metrics_error = ""
        self.gpus = 0

    def collectors(self) -> list[Collector]:
        """Every metrics source this server exports."""
        from .drift import DriftCollector
        from .metrics import (
            EngineCacheCollector,
            GpuCollector,
            HostCollector,
            ModelCollector,
            process_collector,
        )

        out: list[Collector] = [ModelCollector(self.registry), EngineCacheCollector(), DriftCollector(self.registry),
                                _TraceCollector(self.tracer)]
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

    def start(self, grpc_address: str) -> None:
        """Start tracing and (unless disabled) the metrics endpoint.

        A metrics port that cannot be bound is logged and the server goes on serving
        inference: metrics are not worth refusing requests for.

        Raises:
            OSError: the trace file cannot be opened.
        """
        self.tracer.start()
        if not self.settings.allow_metrics:
            return
        from .metrics_http import MetricsServer

        server = MetricsServer(self.collectors())
        address = self.settings.metrics_address or grpc_address
        try:
            server.start(address, self.settings.metrics_port)
        except OSError as exc:
            self.metrics_error = f"cannot bind {address}:{self.settings.metrics_port}: {exc.strerror or exc}"
            log.error("metrics endpoint disabled: %s", self.metrics_error)
            return
        self.metrics = server

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
        elif self.metrics_error:
            lines.append(f"  metrics: disabled ({self.metrics_error})")
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

"""The span exporters: the OTLP-JSON file, and OTLP over gRPC or HTTP.

They are the SDK's exporter interface, fed in batches by the trace pipeline
(pipeline.py). The OTLP exporters come from the optional ``tensorgate[otlp]``
extra and are wrapped so that an unreachable collector costs one warning (and
one line when it is back), not a retry log per batch, and does not hold up
shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .file_exporter import FileSpanExporter
from .options import TraceConfig

__all__ = ["GuardedExporter", "build_exporters"]

log = logging.getLogger("tensorgate.telemetry.exporters")

OTLP_TIMEOUT_S = 5.0  # per export, unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT says otherwise
_OTLP_EXTRA_HINT = "pip install 'tensorgate[otlp]'"


class GuardedExporter(SpanExporter):
    """An OTLP exporter whose failures cost a warning per outage, and nothing at shutdown."""

    def __init__(self, inner: SpanExporter, target: str) -> None:
        self.inner = inner
        self.target = target
        self.down = False
        self.dropped = 0
        self.exported = 0
        self._closing = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closing.is_set() and self.down:
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not kill the processor's thread
            log.debug("trace export to %s raised", self.target, exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            if self.down:
                self.down = False
                log.info("trace export to %s works again", self.target)
        else:
            self.dropped += len(spans)
            if not self.down:
                self.down = True
                log.warning("trace export to %s failed (collector unreachable?); spans are dropped until it "
                            "answers; requests are unaffected", self.target)
        return result

    def closing(self) -> None:
        """Shutdown is near: stop retrying an unreachable collector."""
        self._closing.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.inner.shutdown()


def _otlp_exporter(protocol: str, endpoint: str) -> SpanExporter | None:
    # the SDK's exporters log every retry; GuardedExporter reports outages instead
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    from_env = any(os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"))
    timeout = None if from_env else OTLP_TIMEOUT_S
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter(endpoint=endpoint, insecure=True, timeout=timeout)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=endpoint, timeout=timeout)
    except ImportError:
        log.warning("tracing to OTLP (%s) %s needs the OTLP exporters: %s; no spans go there",
                    protocol, endpoint, _OTLP_EXTRA_HINT)
        return None


def build_exporters(config: TraceConfig) -> list[tuple[SpanExporter, str]]:
    """Every exporter the configuration names, each with a description.

    Raises:
        OSError: the trace file cannot be opened.
    """
    exporters: list[tuple[SpanExporter, str]] = []
    if config.file:
        exporters.append((FileSpanExporter(config.file), f"file {config.file}"))
    protocol = config.otlp_protocol
    if protocol:
        endpoint = config.otlp_endpoint
        exporter = _otlp_exporter(protocol, endpoint)
        if exporter is not None:
            target = f"OTLP/{'gRPC' if protocol == 'grpc' else 'HTTP'} {endpoint}"
            exporters.append((GuardedExporter(exporter, target), target))
    return exporters

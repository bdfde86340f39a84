"""A span exporter that needs no collector: OTLP-JSON lines in a file.

Each export call writes one line holding one ``ExportTraceServiceRequest`` in
OTLP's JSON encoding (otlp_json.py), the OpenTelemetry collector's
file-exporter format; the collector's ``otlpjsonfile`` receiver (or any
OTLP-JSON reader) replays such a file. The trace pipeline hands it records
(``export_records``) so that no span objects are made for it; it also takes SDK
spans (``export``) like any SpanExporter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .otlp_json import RecordEncoder, encode_spans
from .records import BatchRecord, RequestRecord

__all__ = ["FileSpanExporter"]

log = logging.getLogger("tensorgate.telemetry.file_exporter")

_PAUSE_EVERY = 16  # spans or records encoded between GIL releases (about 0.1 ms of work)


class FileSpanExporter(SpanExporter):
    """Appends one OTLP-JSON ExportTraceServiceRequest per export call to a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._failed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        return self._write(encode_spans(spans, pause_every=_PAUSE_EVERY))

    def export_records(self, records: Sequence[RequestRecord | BatchRecord], encoder: RecordEncoder) -> SpanExportResult:
        """The trace pipeline's fast path: records straight to OTLP JSON."""
        if not records:
            return SpanExportResult.SUCCESS
        return self._write(encoder.line(records, pause_every=_PAUSE_EVERY))

    def _write(self, line: str) -> SpanExportResult:
        with self._lock:
            if self._file is None:
                return SpanExportResult.FAILURE
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    log.warning("cannot write traces to %s: %s; spans are dropped", self.path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if self._file is not None:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

"""The trace pipeline: a batch processor between the request path and the span exporters.

The OpenTelemetry SDK's BatchSpanProcessor takes finished span objects; making
them on the event loop cost about 50 us per traced request (measured with
bench/trace_overhead.py), on the one thread every request passes through. So
the request path appends a flat record (records.py) to a deque, and this
processor's thread does the rest in batches: records -> OTLP JSON for the file
exporter (otlp_json.py, no span objects at all), records -> ReadableSpans
(spans.py) for the OTLP exporters. Same
contract as the SDK's: Triton's sizes by default (queue 2048, batches of 512,
every 5 s or as soon as a batch is full; OTEL_BSP_* or ``opentelemetry,bsp_*``
change them; here they count records, one per traced request or batch), a full
queue drops records rather than wait, exporting never blocks a request.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from .otlp_json import RecordEncoder
from .records import BatchRecord, RequestRecord
from .spans import SpanFactory

__all__ = ["TracePipeline", "bsp_sizes"]

log = logging.getLogger("tensorgate.telemetry.pipeline")

_CHUNK = 16  # records turned into spans between GIL releases (about 0.1 ms of work)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def bsp_sizes(queue: int | None, delay_ms: int | None, batch: int | None) -> tuple[int, int, int]:
    """(max queue, schedule delay ms, max export batch): the flags, else OTEL_BSP_*, else Triton's."""
    return (
        queue or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        delay_ms or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000),
        batch or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    )


class TracePipeline:
    """Queues records from any thread; one thread turns them into spans and exports them."""

    def __init__(self, factory: SpanFactory, exporters: Sequence[tuple[SpanExporter, str]],
                 max_queue: int = 2048, delay_ms: int = 5000, batch: int = 512) -> None:
        self.factory = factory
        self.encoder = RecordEncoder(factory)
        self.exporters = list(exporters)
        self.max_queue = max_queue
        self.batch = min(batch, max_queue)
        self.delay_s = delay_ms / 1000
        self.dropped = 0
        self.exported = 0
        self._queue: collections.deque[RequestRecord | BatchRecord] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._woken = False
        self._flush = False
        self._exporting = False
        self._closing = False
        self._failed: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="tg-trace-export", daemon=True)
        self._thread.start()

    # ---- the request path --------------------------------------------------------------

    def emit(self, record: RequestRecord | BatchRecord) -> None:
        """Queue one record (any thread; a deque append, a lock only when a batch is due)."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            if not self.dropped:
                log.warning("trace queue full (%d records): spans are dropped, requests are unaffected; "
                            "raise opentelemetry,bsp_max_queue_size or lower the trace rate", self.max_queue)
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) >= self.batch and not self._woken:
            self._woken = True
            with self._cond:
                self._cond.notify()

    # ---- the pipeline's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._closing or self._flush or len(self._queue) >= self.batch):
                    self._cond.wait(self.delay_s)
                self._woken = self._flush = False
                closing = self._closing
                self._exporting = True
            try:
                self._drain()
            finally:
                with self._cond:
                    self._exporting = False
                    self._cond.notify_all()
            if closing:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            records = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
            spans: list[Any] | None = None  # made only for exporters that need span objects
            for exporter, name in self.exporters:
                try:
                    export_records = getattr(exporter, "export_records", None)
                    if export_records is not None:
                        export_records(records, self.encoder)
                        continue
                    if spans is None:
                        spans = self._spans(records)
                    exporter.export(spans)
                except Exception:  # one exporter's bug must not stop the others or this thread
                    if name not in self._failed:
                        self._failed.add(name)
                        log.warning("trace exporter %s raised; its spans are dropped", name, exc_info=True)
            self.exported += len(records)

    def _spans(self, records: list[RequestRecord | BatchRecord]) -> list[Any]:
        spans: list[Any] = []
        for start in range(0, len(records), _CHUNK):
            if start:
                time.sleep(0)  # let the event loop and the engine threads have the GIL
            spans.extend(self.factory.spans(records[start:start + _CHUNK]))
        return spans

    # ---- flush and shutdown ------------------------------------------------------------------

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export everything queued so far; False when that took longer than the timeout."""
        if self._closing and not self._thread.is_alive():
            return not self._queue
        with self._cond:
            self._flush = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._queue and not self._exporting and not self._flush,
                                       timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Export what is queued (an unreachable collector is not retried) and stop the exporters."""
        for exporter, _ in self.exporters:
            closing = getattr(exporter, "closing", None)
            if closing is not None:
                closing()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        for exporter, name in self.exporters:
            try:
                exporter.shutdown()
            except Exception:
                log.warning("trace exporter %s did not shut down cleanly", name, exc_info=True)

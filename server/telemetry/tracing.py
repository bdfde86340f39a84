"""Request tracing: which requests to trace, and their spans once they finish.

The request path pays one attribute check when tracing is off: transports call
``begin`` only ``if tracer.active``, and ``end`` only for a request whose
``trace`` slot is set; the scheduler calls ``record_batch`` only while
``ANY_ACTIVE`` (some tracer of this process is on). Nothing here imports
OpenTelemetry until tracing is first switched on, so a server that never traces
never loads it.

Sampling follows Triton: the model's setting (or the global one) must have a
level other than OFF; a request that carries a W3C ``traceparent`` is then
always traced, whatever ``rate`` and ``count`` say; any other request is traced
1 in ``rate`` while ``count`` lasts. A finished request leaves a flat record
(records.py) for the trace pipeline (pipeline.py), whose thread makes the spans
and exports them: exporting never blocks or fails a request.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import (
    AlreadyExistsError,
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ServerError,
    StepFailedError,
    UnavailableError,
    UnimplementedError,
)
from .options import TraceConfig
from .records import BatchRecord, Link, RequestRecord
from .trace_settings import TraceSettings

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from ..request import InferRequest, ServedModel
    from .pipeline import TracePipeline

__all__ = ["ANY_ACTIVE", "RequestTrace", "RequestTracer", "grpc_status", "parse_traceparent", "record_batch"]

log = logging.getLogger("tensorgate.telemetry.tracing")

#: some tracer of this process is on: the scheduler's per-batch gate
ANY_ACTIVE = False
_active: set[int] = set()
_gate_lock = threading.Lock()
_getrandbits = random.getrandbits
_now = time.monotonic_ns

# the servicer's status table (servicer._STATUS), as gRPC numbers; a test keeps the two in step
_CODES: tuple[tuple[type[ServerError], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (UnimplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (StepFailedError, grpc.StatusCode.INTERNAL),
)


def grpc_status(error: BaseException | None) -> tuple[int, str]:
    """(gRPC status number, name) that a request failing with ``error`` answers."""
    if error is None:
        return 0, "OK"
    if isinstance(error, ServerError) and error.public:
        for cls, code in _CODES:
            if isinstance(error, cls):
                return int(code.value[0]), code.name
    return int(grpc.StatusCode.INTERNAL.value[0]), "INTERNAL"


def parse_traceparent(value: Any) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent, or None when it is not valid."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    parts = str(value).strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
        int(parts[0], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, flags


class RequestTrace:
    """A traced request's ids and what the scheduler learned about its batch."""

    __slots__ = ("batch_id", "batch_requests", "batch_rows", "batch_trace_id", "cache_hit_ns", "compute_id",
                 "failed_ns", "instance", "model_id", "number", "parent", "parent_number", "queue_ns", "root_id",
                 "trace_id", "tracer")

    def __init__(self, tracer: RequestTracer, parent: SpanContext | None, number: int) -> None:
        self.tracer = tracer
        self.parent = parent
        self.trace_id: int = parent.trace_id if parent is not None else _getrandbits(128)
        self.root_id = _getrandbits(64)
        self.model_id = _getrandbits(64)
        self.compute_id = _getrandbits(64)
        self.number = number
        self.queue_ns = _now()
        self.batch_trace_id = 0
        self.batch_id = 0
        self.batch_rows = 0
        self.batch_requests = 0
        self.instance = ""
        self.failed_ns = 0
        self.parent_number = 0  # an ensemble step: the ensemble request's triton.trace_id
        self.cache_hit_ns = 0  # answered from the response cache at this time

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"


class RequestTracer:
    """One server's tracing: settings, sampling, span building and the export pipeline."""

    def __init__(self, config: TraceConfig, version: str = "") -> None:
        self.config = config
        self.version = version
        self.settings = TraceSettings(config, self._refresh)
        self.active = False  # the hot-path gate: begin() may trace this request
        self._pipeline: TracePipeline | None = None
        self._exporters: list[str] = []
        self._models: weakref.WeakKeyDictionary[ServedModel, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._warned = False

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the gate after a settings change; build the pipeline the first time it is needed.

        An exporter named at startup (a file, a url) is built at start even while the level is OFF, so
        a bad path fails the start instead of a later TraceSetting call.
        """
        global ANY_ACTIVE
        with self._lock:
            usable = self._started and not self._closed
            wanted = usable and self.settings.any_on
            named = usable and bool(self.config.file or self.config.url)
            if (wanted or named) and self._pipeline is None:
                self._build()
            self.active = wanted and self._pipeline is not None and bool(self._pipeline.exporters)
            with _gate_lock:
                (_active.add if self.active else _active.discard)(id(self))
                ANY_ACTIVE = bool(_active)

    def _build(self) -> None:
        from .exporters import build_exporters
        from .pipeline import TracePipeline, bsp_sizes
        from .spans import SpanFactory

        exporters = build_exporters(self.config)  # raises (a bad trace file) before anything is set
        queue, delay, batch = bsp_sizes(self.config.bsp_max_queue_size, self.config.bsp_schedule_delay,
                                        self.config.bsp_max_export_batch_size)
        factory = SpanFactory(dict(self.config.resource), self.version)
        self._pipeline = TracePipeline(factory, exporters, queue, delay, batch)
        self._exporters = [name for _, name in exporters]

    @property
    def pipeline(self) -> TracePipeline | None:
        return self._pipeline

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every finished request's spans now (tests)."""
        return self._pipeline.force_flush(timeout_s) if self._pipeline is not None else True

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters; tracing stays off afterwards."""
        self._closed = True
        self._refresh()
        if self._pipeline is not None:
            self._pipeline.shutdown()

    def describe(self) -> str:
        s = self.settings.values()
        where = ", ".join(self._exporters) if self._exporters else "exporter built when tracing is switched on"
        return (f"tracing (opentelemetry): level {s['trace_level'][0]}, rate {s['trace_rate'][0]}, "
                f"count {s['trace_count'][0]} -> {where}")

    # ---- the request path ------------------------------------------------------------

    def begin(self, r: InferRequest, metadata: Iterable[tuple[str, Any]] | None) -> None:
        """Decide whether to trace a request about to be queued; sets ``r.trace`` if so."""
        sampler = self.settings.sampler(r.model.name)
        if not sampler.on:
            return
        parent = None
        if metadata:
            header = state = None
            for key, value in metadata:
                if key == "traceparent":
                    header = value
                elif key == "tracestate":
                    state = value
            if header is not None:
                parent = self._parent(header, state)
        if parent is None and not sampler.sample():
            return
        r.trace = RequestTrace(self, parent, next(self._numbers))

    def _parent(self, header: Any, state: Any) -> SpanContext | None:
        parsed = parse_traceparent(header)
        if parsed is None:
            return None
        from .spans import make_parent

        if isinstance(state, bytes):
            state = state.decode("ascii", "replace")
        try:
            return make_parent(*parsed, str(state) if state else None)
        except Exception:  # a malformed tracestate: keep the trace, drop the state
            return make_parent(*parsed, None)

    def model_attributes(self, mv: ServedModel) -> dict[str, Any]:
        """A model version's span attributes, made once per loaded version (shared by its records)."""
        attrs = self._models.get(mv)
        if attrs is None:
            attrs = {"triton.model_name": mv.name, "triton.model_version": mv.version,
                     "tensorgate.engine": mv.engine_kind, "tensorgate.precision": mv.precision}
            self._models[mv] = attrs
        return attrs

    def end(self, r: InferRequest, error: BaseException | None = None) -> None:
        """The request is answered (or failed): queue its record. Never raises."""
        t = r.trace
        r.trace = None
        pipeline = self._pipeline
        if t is None or pipeline is None:
            return
        try:
            error = error if error is not None else r.error
            code, name = grpc_status(error)
            if isinstance(error, ServerError):
                error.trace_id = t.trace_id_hex  # the failure's log line names the trace
            pipeline.emit(RequestRecord(
                t.trace_id, t.root_id, t.model_id, t.compute_id, t.parent, t.number, r.id,
                self.model_attributes(r.model), r.batch_size, r.arrival_ns, t.queue_ns, r.compute_start_ns,
                r.compute_input_end_ns, r.compute_output_start_ns, r.compute_end_ns, t.failed_ns, _now(),
                code, name, error is not None, t.instance, t.batch_rows, t.batch_requests,
                t.batch_trace_id, t.batch_id, t.parent_number, t.cache_hit_ns,
            ))
        except Exception:
            self._warn_once()

    def begin_step(self, parent: InferRequest, step: InferRequest) -> None:
        """Trace an ensemble step of a traced request: its spans go under the ensemble's model span."""
        t = parent.trace
        if t is None or self._pipeline is None:
            return
        from opentelemetry.trace import SpanContext, TraceFlags

        context = SpanContext(t.trace_id, t.model_id, False, TraceFlags(1))  # in process: not a remote parent
        step_trace = RequestTrace(self, context, next(self._numbers))
        step_trace.parent_number = t.number
        step.trace = step_trace

    def batch_done(self, batch: Sequence[InferRequest], traced: Sequence[tuple[InferRequest, RequestTrace]],
                   instance: str = "") -> None:
        """A batch ran (or failed): its record, and the batch facts each traced request's spans need."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        now = _now()
        first = batch[0]
        start = first.compute_start_ns
        trace_id, span_id = _getrandbits(128), _getrandbits(64)
        rows = sum(r.batch_size for r in batch)
        failed = first.error is not None
        for _, t in traced:
            t.batch_trace_id, t.batch_id, t.instance = trace_id, span_id, instance
            t.batch_rows, t.batch_requests = rows, len(batch)
            if failed:
                t.failed_ns = now
        links = tuple(Link(t.trace_id, t.model_id, r.id, (start - r.arrival_ns) // 1000, r.batch_size)
                      for r, t in traced)
        pipeline.emit(BatchRecord(
            trace_id, span_id, self.model_attributes(first.model), rows, len(batch), instance, start,
            first.compute_input_end_ns, first.compute_output_start_ns, first.compute_end_ns,
            first.compute_end_ns or now, failed, links,
        ))

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning("building a trace's spans failed; the request is unaffected", exc_info=True)


def record_batch(batch: Sequence[InferRequest], instance: str = "") -> None:
    """The scheduler's per-batch hook (only called while ANY_ACTIVE); ``instance`` names the instance
    that ran it. Never raises."""
    try:
        traced = [(r, t) for r in batch if (t := r.trace) is not None]
        if traced:
            traced[0][1].tracer.batch_done(batch, traced, instance)
    except Exception:
        log.warning("recording a batch span failed; the batch is unaffected", exc_info=True)

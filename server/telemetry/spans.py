"""Finished spans, built after the fact from the request's monotonic timestamps.

Triton's span tree per traced request: ``InferRequest`` (SERVER) -> a span named
after the model (REQUEST_START, QUEUE_START, REQUEST_END) -> ``compute``
(COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END). Each
executed batch that holds a traced request gets its own ``batch`` span, the
root of its own trace, linked to every traced request's model span; each
request's compute span links back to it.

Why ReadableSpans made directly rather than through a Tracer: the timestamps
already exist (the scheduler stamps them for the statistics extension), so a
span is one finished object; no context objects, no span lifecycle, no locks.
They are made from the request path's records (records.py) on the pipeline's
thread, a batch at a time. Monotonic times get a wall-clock offset, as Triton
does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from .records import BatchRecord, RequestRecord

__all__ = ["SpanFactory", "make_parent"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_NO_ATTRIBUTES: dict[str, Any] = {}
_BATCH_LINK = {"tensorgate.link": "batch"}


def make_parent(trace_id: int, span_id: int, flags: int, state: str | None) -> SpanContext:
    """The remote parent a W3C traceparent/tracestate names."""
    trace_state = TraceState.from_header([state]) if state else None
    return SpanContext(trace_id, span_id, True, TraceFlags(flags), trace_state)


class SpanFactory:
    """Makes the request and batch spans of one server (one resource, one scope)."""

    def __init__(self, resource: dict[str, str], version: str) -> None:
        self.resource = Resource.create({"service.name": "tensorgate", "service.version": version, **resource})
        self.scope = InstrumentationScope("tensorgate", version)
        self.offset = time.time_ns() - time.monotonic_ns()  # monotonic -> wall clock

    def spans(self, records: Iterable[RequestRecord | BatchRecord]) -> list[ReadableSpan]:
        out: list[ReadableSpan] = []
        for record in records:
            if isinstance(record, RequestRecord):
                out.extend(self.request_spans(record))
            else:
                out.append(self.batch_span(record))
        return out

    def _span(self, name: str, ctx: SpanContext, parent: SpanContext | None, start: int, end: int,
              attributes: dict[str, Any], events: Sequence[Event] = (), links: Sequence[Link] = (),
              kind: SpanKind = SpanKind.INTERNAL, status: Status = _UNSET) -> ReadableSpan:
        return ReadableSpan(
            name, ctx, parent, resource=self.resource, attributes=attributes, events=events, links=links,
            kind=kind, status=status, start_time=start + self.offset, end_time=end + self.offset,
            instrumentation_scope=self.scope,
        )

    def _events(self, *pairs: tuple[str, int]) -> list[Event]:
        offset = self.offset
        return [Event(name, _NO_ATTRIBUTES, ns + offset) for name, ns in pairs if ns]

    def request_spans(self, r: RequestRecord) -> list[ReadableSpan]:
        """InferRequest -> <model> -> compute for one finished request."""
        state = r.parent.trace_state if r.parent is not None else None
        root = SpanContext(r.trace_id, r.root_id, False, _SAMPLED, state)
        model_ctx = SpanContext(r.trace_id, r.model_id, False, _SAMPLED, state)
        status = Status(StatusCode.ERROR, r.code_name) if r.error else _UNSET
        spans: list[ReadableSpan] = []
        model_parent = r.parent  # an ensemble step hangs under the ensemble's model span
        if not r.parent_number:
            model_parent = root
            spans.append(self._span(
                "InferRequest", root, r.parent, r.arrival, r.end,
                {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                 "rpc.grpc.status_code": r.code, "triton.request_id": r.request_id},
                kind=SpanKind.SERVER, status=status,
            ))
        attrs = dict(r.model)
        attrs["triton.trace_id"] = r.number
        attrs["triton.trace_parent_id"] = r.parent_number
        attrs["triton.request_id"] = r.request_id
        attrs["tensorgate.batch_size"] = r.rows
        if r.compute_start:
            attrs["tensorgate.queue_us"] = (r.compute_start - r.arrival) // 1000
        if r.instance:
            attrs["tensorgate.instance"] = r.instance
        spans.append(self._span(
            r.model["triton.model_name"], model_ctx, model_parent, r.arrival, r.end, attrs,
            self._events(("REQUEST_START", r.arrival), ("QUEUE_START", r.queue), ("CACHE_HIT", r.cache_hit),
                         ("REQUEST_END", r.end)),
            status=status,
        ))
        if r.compute_start:
            links: tuple[Link, ...] = ()
            if r.batch_id:
                links = (Link(SpanContext(r.batch_trace_id, r.batch_id, False, _SAMPLED), _BATCH_LINK),)
            spans.append(self._span(
                "compute", SpanContext(r.trace_id, r.compute_id, False, _SAMPLED, state), model_ctx,
                r.compute_start, r.compute_end or r.failed or r.end,
                {"tensorgate.instance": r.instance, "tensorgate.batch.rows": r.batch_rows,
                 "tensorgate.batch.requests": r.batch_requests},
                self._events(("COMPUTE_START", r.compute_start), ("COMPUTE_INPUT_END", r.input_end),
                             ("COMPUTE_OUTPUT_START", r.output_start), ("COMPUTE_END", r.compute_end)),
                links, status=status if r.compute_end == 0 else _UNSET,
            ))
        return spans

    def batch_span(self, b: BatchRecord) -> ReadableSpan:
        """The execution of one batch, linked to the model span of each traced request in it."""
        attrs = dict(b.model)
        attrs.update({"tensorgate.batch.rows": b.rows, "tensorgate.batch.requests": b.requests,
                      "tensorgate.batch.traced_requests": len(b.links), "tensorgate.instance": b.instance})
        links = [
            Link(SpanContext(link.trace_id, link.span_id, False, _SAMPLED),
                 {"tensorgate.request_id": link.request_id, "tensorgate.queue_us": link.queue_us,
                  "tensorgate.rows": link.rows})
            for link in b.links
        ]
        return self._span(
            "batch", SpanContext(b.trace_id, b.span_id, False, _SAMPLED), None, b.start, b.end, attrs,
            self._events(("COMPUTE_START", b.start), ("COMPUTE_INPUT_END", b.input_end),
                         ("COMPUTE_OUTPUT_START", b.output_start), ("COMPUTE_END", b.compute_end)),
            links, status=Status(StatusCode.ERROR, "BACKEND") if b.failed else _UNSET,
        )

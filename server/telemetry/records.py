"""What the request path hands to the trace pipeline: one flat record per traced request or batch.

Building OpenTelemetry span objects costs tens of microseconds per request, so
the event loop does not: it queues one of these (a tuple of numbers and
strings) and the pipeline's thread turns records into spans in batches
(spans.py). Times are the scheduler's monotonic nanoseconds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["BatchRecord", "Link", "RequestRecord"]


class RequestRecord(NamedTuple):
    """A finished traced request: its ids, its timestamps, its batch, its outcome."""

    trace_id: int
    root_id: int
    model_id: int
    compute_id: int
    parent: Any  # the caller's SpanContext (W3C traceparent), or None
    number: int  # triton.trace_id: the server's own trace counter
    request_id: str
    model: dict[str, Any]  # the model version's attributes (shared, read-only)
    rows: int
    arrival: int
    queue: int
    compute_start: int  # 0: never computed (timed out, refused)
    input_end: int
    output_start: int
    compute_end: int  # 0: the batch failed
    failed: int  # when the batch failed, else 0
    end: int
    code: int  # gRPC status
    code_name: str
    error: bool
    instance: str
    batch_rows: int
    batch_requests: int
    batch_trace_id: int
    batch_id: int
    parent_number: int = 0  # an ensemble step: no InferRequest root; the model span's parent is ``parent``
    cache_hit: int = 0  # answered from the response cache (a CACHE_HIT event), else 0


class Link(NamedTuple):
    """A batch's link to one traced request's model span."""

    trace_id: int
    span_id: int
    request_id: str
    queue_us: int
    rows: int


class BatchRecord(NamedTuple):
    """One executed batch that held at least one traced request."""

    trace_id: int
    span_id: int
    model: dict[str, Any]
    rows: int
    requests: int
    instance: str
    start: int
    input_end: int
    output_start: int
    compute_end: int
    end: int
    failed: bool
    links: tuple[Link, ...]

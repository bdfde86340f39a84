"""OTLP JSON, written out by hand: the collector's file format, one ExportTraceServiceRequest per line.

OTLP's JSON encoding: ids in hex, 64-bit integers as strings, enums as numbers.
Two encoders of the same text: ``encode_spans`` for SDK ReadableSpans, and
``RecordEncoder`` straight from the trace pipeline's records (records.py), which
skips making span objects at all (a test checks the two agree). Both write the
text themselves rather than going through protobuf messages or json.dumps of
dicts: at trace rate 1 encoding is the exporter's whole cost, and spans ->
protobuf -> JSON costs about ten times as much.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring as _esc
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .records import BatchRecord, RequestRecord
from .spans import SpanFactory

__all__ = ["RecordEncoder", "encode_spans"]

_KEYS: dict[str, str] = {}  # attribute key -> its encoded head; keys repeat, so this stays small


def _key(key: str) -> str:
    head = _KEYS.get(key)
    if head is None:
        head = '{"key":' + _esc(key) + ',"value":'
        if len(_KEYS) < 4096:
            _KEYS[key] = head
    return head


def _value(v: Any) -> str:
    kind = type(v)
    if kind is str:
        return '{"stringValue":' + _esc(v) + "}"
    if kind is bool:
        return '{"boolValue":true}' if v else '{"boolValue":false}'
    if kind is int:
        return f'{{"intValue":"{v}"}}'
    if kind is float:
        return '{"doubleValue":' + (repr(v) if math.isfinite(v) else _esc(_NON_FINITE[str(v)])) + "}"
    if isinstance(v, bool):
        return _value(bool(v))
    if isinstance(v, int):
        return _value(int(v))
    if isinstance(v, float):
        return _value(float(v))
    if isinstance(v, bytes):
        return '{"bytesValue":"' + base64.b64encode(v).decode() + '"}'
    if isinstance(v, Sequence) and not isinstance(v, str):
        return '{"arrayValue":{"values":[' + ",".join([_value(x) for x in v]) + "]}}"
    return _value(str(v))


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # proto3 JSON's spellings


def _attributes(attrs: Mapping[str, Any]) -> str:
    return ",".join([_key(k) + _value(v) + "}" for k, v in attrs.items()])


def _span(span: ReadableSpan) -> str:
    ctx = span.context
    assert ctx is not None
    parent = span.parent
    parts = [f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}"']
    if ctx.trace_state:
        parts.append(',"traceState":' + _esc(ctx.trace_state.to_header()))
    if parent is not None:
        parts.append(f',"parentSpanId":"{parent.span_id:016x}"')
    flags = int(ctx.trace_flags) | (0x300 if parent is not None and parent.is_remote else 0x100)
    # OTLP numbers kinds from 1 (INTERNAL), the API from 0
    parts.append(f',"flags":{flags},"name":{_esc(span.name)},"kind":{span.kind.value + 1},'
                 f'"startTimeUnixNano":"{span.start_time or 0}","endTimeUnixNano":"{span.end_time or 0}"')
    attrs = span.attributes
    if attrs:
        parts.append(',"attributes":[' + _attributes(attrs) + "]")
    events = span.events
    if events:
        parts.append(',"events":[' + ",".join([
            f'{{"timeUnixNano":"{e.timestamp}","name":{_esc(e.name)}'
            + (',"attributes":[' + _attributes(e.attributes) + "]}" if e.attributes else "}")
            for e in events]) + "]")
    links = span.links
    if links:
        parts.append(',"links":[' + ",".join([
            f'{{"traceId":"{link.context.trace_id:032x}","spanId":"{link.context.span_id:016x}"'
            + (',"attributes":[' + _attributes(link.attributes) + "]}" if link.attributes else "}")
            for link in links]) + "]")
    status = span.status
    code = status.status_code.value
    if not code:
        parts.append(',"status":{}}')
    elif status.description:
        parts.append(f',"status":{{"code":{code},"message":{_esc(status.description)}}}}}')
    else:
        parts.append(f',"status":{{"code":{code}}}}}')
    return "".join(parts)


def _scope(scope: InstrumentationScope | None) -> str:
    if scope is None:
        return '{"name":""}'
    version = ',"version":' + _esc(scope.version) if scope.version else ""
    return '{"name":' + _esc(scope.name) + version + "}"


def encode_spans(spans: Sequence[ReadableSpan], pause_every: int = 0) -> str:
    """One ExportTraceServiceRequest as OTLP JSON text (one line), spans grouped by resource and scope.

    Args:
        spans: finished spans.
        pause_every: give up the GIL after every this many spans (0: never). The exporter's thread
            encodes hundreds of spans per call; without pauses it would hold the GIL for milliseconds
            while the event loop and the engine threads wait for it.
    """
    groups: dict[tuple[int, int], tuple[ReadableSpan, list[str]]] = {}
    for index, span in enumerate(spans):  # identity first: a server's spans share one resource and scope
        if pause_every and index and not index % pause_every:
            time.sleep(0)
        key = (id(span.resource), id(span.instrumentation_scope))
        entry = groups.get(key)
        if entry is None:
            entry = groups[key] = (span, [])
        entry[1].append(_span(span))
    by_resource: dict[Any, dict[Any, list[str]]] = {}
    for first, encoded in groups.values():  # then equality, once per group
        scopes = by_resource.setdefault(first.resource, {})
        scopes.setdefault(first.instrumentation_scope, []).extend(encoded)
    resource_spans = []
    for resource, scopes in by_resource.items():
        scope_spans = ",".join(['{"scope":' + _scope(scope) + ',"spans":[' + ",".join(encoded) + "]}"
                                for scope, encoded in scopes.items()])
        resource_spans.append('{"resource":{"attributes":[' + _attributes(resource.attributes)
                              + ']},"scopeSpans":[' + scope_spans + "]}")
    return '{"resourceSpans":[' + ",".join(resource_spans) + "]}"



_ROOT_ATTRIBUTES = _attributes({"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService"}) + ","
_EVENT_NAMES = {name: _esc(name) for name in (
    "REQUEST_START", "QUEUE_START", "REQUEST_END", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
    "COMPUTE_END", "CACHE_HIT")}


class RecordEncoder:
    """Records -> the same OTLP JSON ``encode_spans(factory.spans(records))`` writes, without span objects."""

    def __init__(self, factory: SpanFactory) -> None:
        self.offset = factory.offset
        self.head = ('{"resourceSpans":[{"resource":{"attributes":[' + _attributes(factory.resource.attributes)
                     + ']},"scopeSpans":[{"scope":' + _scope(factory.scope) + ',"spans":[')
        self._models: dict[int, tuple[dict[str, Any], str]] = {}  # id(model attributes) -> (them, encoded)

    def _model(self, attrs: dict[str, Any]) -> str:
        entry = self._models.get(id(attrs))
        if entry is None or entry[0] is not attrs:
            entry = self._models[id(attrs)] = (attrs, _attributes(attrs))
        return entry[1]

    def _events(self, pairs: Iterable[tuple[str, int]]) -> str:
        offset = self.offset
        return ',"events":[' + ",".join(
            [f'{{"timeUnixNano":"{ns + offset}","name":{_EVENT_NAMES[name]}}}' for name, ns in pairs if ns]) + "]"

    def line(self, records: Sequence[RequestRecord | BatchRecord], pause_every: int = 0) -> str:
        """One ExportTraceServiceRequest holding every span of these records."""
        parts: list[str] = []
        for index, record in enumerate(records):
            if pause_every and index and not index % pause_every:
                time.sleep(0)  # let the request path have the GIL
            if isinstance(record, RequestRecord):
                self._request(record, parts)
            else:
                self._batch(record, parts)
        return self.head + ",".join(parts) + "]}]}]}"

    def _request(self, r: RequestRecord, out: list[str]) -> None:
        offset, parent = self.offset, r.parent
        trace = f'{{"traceId":"{r.trace_id:032x}"'
        state = ""
        if parent is not None and parent.trace_state:
            state = ',"traceState":' + _esc(parent.trace_state.to_header())
        times = f'"startTimeUnixNano":"{r.arrival + offset}","endTimeUnixNano":"{r.end + offset}"'
        status = f',"status":{{"code":2,"message":{_esc(r.code_name)}}}}}' if r.error else ',"status":{}}'
        request_id = _value(r.request_id)
        caller = ""
        flags = 257
        if parent is not None:
            caller = f',"parentSpanId":"{parent.span_id:016x}"'
            flags = 769 if parent.is_remote else 257  # sampled; OTLP's "parent is remote" bits
        model_parent = f"{r.root_id:016x}"
        if r.parent_number and parent is not None:  # an ensemble step: under the ensemble's model span
            model_parent = f"{parent.span_id:016x}"
        else:
            out.append(
                f'{trace},"spanId":"{r.root_id:016x}"{state}{caller},"flags":{flags},"name":"InferRequest",'
                f'"kind":2,{times},"attributes":[{_ROOT_ATTRIBUTES}{_key("rpc.grpc.status_code")}'
                f'{_value(r.code)}}},{_key("triton.request_id")}{request_id}}}]{status}'
            )
        extra = {"triton.trace_id": r.number, "triton.trace_parent_id": r.parent_number,
                 "triton.request_id": r.request_id, "tensorgate.batch_size": r.rows}
        if r.compute_start:
            extra["tensorgate.queue_us"] = (r.compute_start - r.arrival) // 1000
        if r.instance:
            extra["tensorgate.instance"] = r.instance
        out.append(
            f'{trace},"spanId":"{r.model_id:016x}"{state},"parentSpanId":"{model_parent}","flags":257,'
            f'"name":{_esc(r.model["triton.model_name"])},"kind":1,{times},'
            f'"attributes":[{self._model(r.model)},{_attributes(extra)}]'
            + self._events((("REQUEST_START", r.arrival), ("QUEUE_START", r.queue), ("CACHE_HIT", r.cache_hit),
                            ("REQUEST_END", r.end)))
            + status
        )
        if not r.compute_start:
            return
        end = r.compute_end or r.failed or r.end
        link = (f',"links":[{{"traceId":"{r.batch_trace_id:032x}","spanId":"{r.batch_id:016x}",'
                f'"attributes":[{_key("tensorgate.link")}{{"stringValue":"batch"}}}}]}}]' if r.batch_id else "")
        compute = {"tensorgate.instance": r.instance, "tensorgate.batch.rows": r.batch_rows,
                   "tensorgate.batch.requests": r.batch_requests}
        out.append(
            f'{trace},"spanId":"{r.compute_id:016x}"{state},"parentSpanId":"{r.model_id:016x}","flags":257,'
            f'"name":"compute","kind":1,"startTimeUnixNano":"{r.compute_start + offset}",'
            f'"endTimeUnixNano":"{end + offset}","attributes":[{_attributes(compute)}]'
            + self._events((("COMPUTE_START", r.compute_start), ("COMPUTE_INPUT_END", r.input_end),
                            ("COMPUTE_OUTPUT_START", r.output_start), ("COMPUTE_END", r.compute_end)))
            + link + (status if r.compute_end == 0 else ',"status":{}}')
        )

    def _batch(self, b: BatchRecord, out: list[str]) -> None:
        offset = self.offset
        batch = {"tensorgate.batch.rows": b.rows, "tensorgate.batch.requests": b.requests,
                 "tensorgate.batch.traced_requests": len(b.links), "tensorgate.instance": b.instance}
        links = ",".join([
            f'{{"traceId":"{link.trace_id:032x}","spanId":"{link.span_id:016x}","attributes":['
            + _attributes({"tensorgate.request_id": link.request_id, "tensorgate.queue_us": link.queue_us,
                           "tensorgate.rows": link.rows}) + "]}"
            for link in b.links])
        status = ',"status":{"code":2,"message":"BACKEND"}}' if b.failed else ',"status":{}}'
        out.append(
            f'{{"traceId":"{b.trace_id:032x}","spanId":"{b.span_id:016x}","flags":257,"name":"batch","kind":1,'
            f'"startTimeUnixNano":"{b.start + offset}","endTimeUnixNano":"{b.end + offset}",'
            f'"attributes":[{self._model(b.model)},{_attributes(batch)}]'
            + self._events((("COMPUTE_START", b.start), ("COMPUTE_INPUT_END", b.input_end),
                            ("COMPUTE_OUTPUT_START", b.output_start), ("COMPUTE_END", b.compute_end)))
            + (f',"links":[{links}]' if links else "") + status
        )

"""The file exporter's lines are OTLP JSON: each parses as an ExportTraceServiceRequest."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from telemetry_support import simple_request, stub_for, traced_server

from tensorgate.server.telemetry.file_exporter import FileSpanExporter
from tensorgate.server.telemetry.otlp_json import RecordEncoder, encode_spans
from tensorgate.server.telemetry.records import BatchRecord, RequestRecord
from tensorgate.server.telemetry.records import Link as RecordLink
from tensorgate.server.telemetry.spans import SpanFactory, make_parent

_IDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP JSON writes ids in hex; protobuf's own JSON mapping wants base64 for bytes fields."""
    if isinstance(node, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in _IDS else _hex_ids_to_base64(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def parse_line(line: str) -> ExportTraceServiceRequest:
    return json_format.ParseDict(_hex_ids_to_base64(json.loads(line)), ExportTraceServiceRequest())


def _span(name: str, span_id: int, parent: SpanContext | None, **kwargs: Any) -> ReadableSpan:
    return ReadableSpan(
        name, SpanContext(0xABC, span_id, False, TraceFlags(1)), parent,
        resource=Resource.create({"service.name": "tensorgate"}),
        instrumentation_scope=InstrumentationScope("tensorgate", "1.0"), start_time=10, end_time=20, **kwargs,
    )


def test_encoded_spans_parse_as_otlp_and_keep_every_field(tmp_path: Path) -> None:
    remote = SpanContext(0xABC, 0x1, True, TraceFlags(1))
    spans = [
        _span("InferRequest", 0x2, remote, kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, "UNAVAILABLE"),
              attributes={"s": "x", "i": 7, "f": 0.5, "b": True, "list": ("a", "b")}),
        _span("compute", 0x3, SpanContext(0xABC, 0x2, False, TraceFlags(1)),
              events=(Event("COMPUTE_START", {}, 11), Event("COMPUTE_END", {"k": 1}, 19)),
              links=(Link(SpanContext(0xDEF, 0x9, False, TraceFlags(1)), {"tensorgate.link": "batch"}),)),
    ]
    exporter = FileSpanExporter(tmp_path / "sub" / "t.jsonl")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # closed
    lines = (tmp_path / "sub" / "t.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one ExportTraceServiceRequest per export call
    message = parse_line(lines[0])
    (rs,) = message.resource_spans
    assert {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"] == "tensorgate"
    (ss,) = rs.scope_spans
    assert ss.scope.name == "tensorgate" and ss.scope.version == "1.0"
    root, compute = ss.spans
    assert root.trace_id == (0xABC).to_bytes(16, "big") and root.parent_span_id == (1).to_bytes(8, "big")
    assert root.kind == root.SPAN_KIND_SERVER and root.status.code == root.status.STATUS_CODE_ERROR
    assert root.status.message == "UNAVAILABLE" and root.start_time_unix_nano == 10 and root.end_time_unix_nano == 20
    assert root.flags & 0x300 == 0x300  # the parent is remote (OTLP's span flags)
    attrs = {a.key: a.value for a in root.attributes}
    assert attrs["s"].string_value == "x" and attrs["i"].int_value == 7 and attrs["f"].double_value == 0.5
    assert attrs["b"].bool_value and [v.string_value for v in attrs["list"].array_value.values] == ["a", "b"]
    assert compute.kind == compute.SPAN_KIND_INTERNAL
    assert [(e.name, e.time_unix_nano) for e in compute.events] == [("COMPUTE_START", 11), ("COMPUTE_END", 19)]
    (link,) = compute.links
    assert link.trace_id == (0xDEF).to_bytes(16, "big") and link.attributes[0].value.string_value == "batch"
    assert lines[0] == encode_spans(spans)


def test_a_servers_trace_file_parses_line_by_line(telemetry_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=1", f"opentelemetry,file={out}",
                       "opentelemetry,bsp_max_export_batch_size=2") as handle:
        stub = stub_for(handle)
        for i in range(3):
            stub.ModelInfer(simple_request(f"r{i}"))
    # the server stopped: its shutdown flushed everything
    lines = out.read_text().splitlines()
    assert len(lines) >= 2
    names = [span.name for line in lines for rs in parse_line(line).resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert sorted(set(names)) == ["InferRequest", "batch", "compute", "simple"]
    assert names.count("InferRequest") == 3


def _records() -> list[RequestRecord | BatchRecord]:
    model = {"triton.model_name": "m", "triton.model_version": 3, "tensorgate.engine": "onnxruntime",
             "tensorgate.precision": "FP16"}
    caller = make_parent(0xABC, 0x77, 1, "vendor=opaque,other=1")
    ok = RequestRecord(0xABC, 1, 2, 3, caller, 1, 'id "quoted"', model, 2, 1000, 1100, 2000, 2100, 2900, 3000, 0,
                       3500, 0, "OK", False, "tg-m-3-0", 5, 3, 0xF00, 0x99)
    failed = ok._replace(trace_id=0xDEF, parent=None, compute_end=0, failed=3200, code=13, code_name="INTERNAL",
                         error=True, request_id="")
    never = ok._replace(trace_id=0x123, parent=make_parent(0x123, 0x5, 0, None), compute_start=0, input_end=0,
                        output_start=0, compute_end=0, instance="", batch_id=0, code=4,
                        code_name="DEADLINE_EXCEEDED", error=True)
    batch = BatchRecord(0xF00, 0x99, model, 5, 3, "tg-m-3-0", 2000, 2100, 2900, 3000, 3000, False,
                        (RecordLink(0xABC, 2, 'id "quoted"', 1, 2), RecordLink(0xDEF, 2, "", 0, 3)))
    return [ok, failed, never, batch, batch._replace(failed=True, compute_end=0, links=())]


def test_records_encode_exactly_like_their_spans() -> None:
    """The pipeline writes files straight from records; that must be the very JSON the spans give."""
    factory = SpanFactory({"deployment.environment": "test"}, "1.0")
    records = _records()
    direct = json.loads(RecordEncoder(factory).line(records, pause_every=2))
    via_spans = json.loads(encode_spans(factory.spans(records)))
    assert direct == via_spans
    names = [s["name"] for s in direct["resourceSpans"][0]["scopeSpans"][0]["spans"]]
    assert names == ["InferRequest", "m", "compute", "InferRequest", "m", "compute", "InferRequest", "m",
                     "batch", "batch"]
    parse_line(RecordEncoder(factory).line(records))  # and it is OTLP

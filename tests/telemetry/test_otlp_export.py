"""OTLP export for real: the SDK's exporters against receivers built on opentelemetry-proto's
collector service (gRPC) and its message over HTTP, and an unreachable collector that must cost
nothing but a warning."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

# the OTLP exporters are an optional extra: without it these tests have nothing to test
_EXTRA = "needs the OTLP exporters: pip install 'tensorgate[otlp]'"
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", reason=_EXTRA)
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter", reason=_EXTRA)

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402
from telemetry_support import (  # noqa: E402
    TRACE_ID,
    TRACEPARENT,
    nobatch_request,
    simple_request,
    stub_for,
    traced_server,
    wait_for,
)

from support import free_port  # noqa: E402


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP/gRPC trace receiver of a collector: keeps every ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture()
def grpc_receiver() -> Iterator[tuple[_Receiver, int]]:
    receiver = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@pytest.fixture()
def http_receiver() -> Iterator[tuple[list[trace_service_pb2.ExportTraceServiceRequest], int]]:
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield received, int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def test_spans_reach_an_otlp_grpc_receiver(telemetry_repo: Path, grpc_receiver: tuple[_Receiver, int]) -> None:
    receiver, port = grpc_receiver
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=0", f"opentelemetry,url=grpc://127.0.0.1:{port}",
                       "opentelemetry,bsp_schedule_delay=100") as handle:
        stub_for(handle).ModelInfer(simple_request("otlp"), metadata=(("traceparent", TRACEPARENT),))
        assert "OTLP/gRPC 127.0.0.1" in handle.server.telemetry.tracer.describe()
        spans = wait_for(lambda: len(receiver.spans()) >= 4 and receiver.spans())  # before any flush: the BSP's own
    names = sorted(s.name for s in spans if s.trace_id.hex() == TRACE_ID)
    assert names == ["InferRequest", "compute", "simple"]
    assert any(s.name == "batch" for s in spans)
    resource = receiver.requests[0].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "tensorgate"


def test_spans_reach_an_otlp_http_receiver(telemetry_repo: Path, http_receiver: tuple[list[Any], int]) -> None:
    received, port = http_receiver
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=1",
                       f"opentelemetry,url=http://127.0.0.1:{port}/v1/traces") as handle:
        stub_for(handle).ModelInfer(simple_request("otlp-http"), metadata=(("traceparent", TRACEPARENT),))
        assert handle.server.telemetry.tracer.flush(10)
    names = {s.name for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
             if s.trace_id.hex() == TRACE_ID}
    assert names == {"InferRequest", "compute", "simple"}


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_an_unreachable_collector_never_fails_a_request(
    telemetry_repo: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    caplog.set_level(logging.INFO, logger="tensorgate")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # give up on each export after 1 s
    port = free_port()  # nothing listens there
    url = f"grpc://127.0.0.1:{port}" if scheme == "grpc" else f"http://127.0.0.1:{port}/v1/traces"
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=1", f"opentelemetry,url={url}",
                       "opentelemetry,bsp_schedule_delay=50", "opentelemetry,bsp_max_export_batch_size=4") as handle:
        stub = stub_for(handle)
        for i in range(20):
            assert stub.ModelInfer(nobatch_request(f"r{i}"), timeout=10).id == f"r{i}"
        wait_for(lambda: any("failed (collector unreachable?)" in r.getMessage() for r in caplog.records), 15)
        for i in range(5):  # still serving while the exporter keeps failing
            stub.ModelInfer(nobatch_request(f"late{i}"), timeout=10)
        started = time.monotonic()
    assert time.monotonic() - started < 20  # shutdown does not wait out the collector
    warnings = [r for r in caplog.records if "failed (collector unreachable?)" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # one warning per outage

"""Traces of real requests on a real server, read back from the file exporter.

Triton's span tree (InferRequest -> model -> compute, timestamps as events), W3C
context propagation, the batch span that links the requests of one batch,
rate/count, TraceSetting at run time, failures, both gRPC flavours, streaming.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from telemetry_support import (
    PARENT_ID,
    TRACE_ID,
    TRACEPARENT,
    attributes,
    failing_request,
    flushed_spans,
    nobatch_request,
    scrape,
    simple_request,
    stub_for,
    traced_server,
    value,
)

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.server.errors import ServerError
from tensorgate.server.servicer import _STATUS
from tensorgate.server.telemetry import tracing

EVENTS_MODEL = ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
EVENTS_COMPUTE = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


def by_trace(spans: list[dict[str, Any]], trace_id: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans if s["traceId"] == trace_id}


def test_a_traceparent_request_yields_tritons_span_tree(telemetry_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    # rate 0: only requests that carry a context are traced (Triton's documented pattern)
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=0", f"opentelemetry,file={out}",
                       "opentelemetry,resource=deployment.environment=test") as handle:
        stub = stub_for(handle)
        stub.ModelInfer(simple_request("with-context"),
                        metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=opaque")))
        stub.ModelInfer(simple_request("without-context"))
        spans = flushed_spans(handle, out)
    request_spans = [s for s in spans if s["name"] != "batch"]
    assert {s["traceId"] for s in request_spans} == {TRACE_ID}  # the untraced request left nothing
    tree = by_trace(spans, TRACE_ID)
    assert set(tree) == {"InferRequest", "simple", "compute"}
    root, model, compute = tree["InferRequest"], tree["simple"], tree["compute"]
    assert root["kind"] == 2 and root["parentSpanId"] == PARENT_ID  # SERVER, child of the caller's span
    assert root["traceState"] == "vendor=opaque"
    assert model["parentSpanId"] == root["spanId"] and compute["parentSpanId"] == model["spanId"]
    assert [e["name"] for e in model["events"]] == EVENTS_MODEL
    assert [e["name"] for e in compute["events"]] == EVENTS_COMPUTE
    times = [int(e["timeUnixNano"]) for e in model["events"][:2] + compute["events"] + model["events"][2:]]
    assert times == sorted(times)
    assert int(root["startTimeUnixNano"]) <= int(compute["startTimeUnixNano"]) <= int(root["endTimeUnixNano"])
    attrs = attributes(model)
    assert attrs["triton.model_name"] == "simple" and attrs["triton.model_version"] == 1
    assert attrs["triton.request_id"] == "with-context" and attrs["tensorgate.batch_size"] == 1
    assert attrs["tensorgate.engine"] == "onnxruntime" and attrs["tensorgate.precision"] == "FP32"
    assert attrs["tensorgate.instance"].startswith("tg-simple-1-") and attrs["tensorgate.queue_us"] >= 0
    assert attributes(root)["rpc.grpc.status_code"] == 0 and root["status"] == {}
    assert attributes(compute)["tensorgate.batch.rows"] == 1
    assert root["resource"]["service.name"] == {"stringValue": "tensorgate"}
    assert root["resource"]["deployment.environment"] == {"stringValue": "test"}


def test_requests_of_one_batch_link_to_one_batch_span(telemetry_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=1", f"opentelemetry,file={out}") as handle:
        stub = stub_for(handle)
        # the first request waits out the 300 ms queue delay; the others join its batch
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: stub.ModelInfer(simple_request(f"r{i}", rows=1 + i % 2), timeout=30), range(4)))
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple")).model_stats[0]
        spans = flushed_spans(handle, out)
    batches = {s["spanId"]: s for s in spans if s["name"] == "batch"}
    assert len(batches) == stats.execution_count  # one batch span per execution
    computes = [s for s in spans if s["name"] == "compute"]
    models = {s["spanId"]: s for s in spans if s["name"] == "simple"}
    assert len(computes) == len(models) == 4 and len({s["traceId"] for s in computes}) == 4
    for compute in computes:
        (link,) = compute["links"]
        assert link["spanId"] in batches  # every request names its batch
    linked = [link for b in batches.values() for link in b["links"]]
    assert sorted(link["spanId"] for link in linked) == sorted(models)  # every batch names its requests
    for batch in batches.values():
        attrs = attributes(batch)
        assert attrs["tensorgate.batch.requests"] == len(batch["links"]) == attrs["tensorgate.batch.traced_requests"]
        assert attrs["tensorgate.batch.rows"] == sum(attributes(link)["tensorgate.rows"] for link in batch["links"])
        assert all(attributes(link)["tensorgate.queue_us"] >= 0 for link in batch["links"])
        assert [e["name"] for e in batch["events"]] == EVENTS_COMPUTE
    if stats.execution_count == 1:  # the usual case: all four rode in one batch of 6 rows
        (batch,) = batches.values()
        assert attributes(batch)["tensorgate.batch.rows"] == 6


def test_rate_and_count_are_honoured(telemetry_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=2", "count=3",
                       f"opentelemetry,file={out}") as handle:
        stub = stub_for(handle)
        for i in range(10):
            stub.ModelInfer(nobatch_request(f"n{i}"))
        traced = sorted(attributes(s)["triton.request_id"] for s in flushed_spans(handle, out) if s["name"] == "nobatch")
        assert traced == ["n1", "n3", "n5"]  # 1 in 2, and only 3 of them
        stub.ModelInfer(nobatch_request("forced"), metadata=(("traceparent", TRACEPARENT),))
        spans = flushed_spans(handle, out)
        assert "forced" in {attributes(s).get("triton.request_id") for s in spans}  # a context beats count
        setting = stub.TraceSetting(pb.TraceSettingRequest())
        assert list(setting.settings["trace_count"].value) == ["0"]
        text = scrape(handle)
        assert value(text, "tensorgate_trace_records_exported_total") == 8  # 4 requests and their 4 runs
        assert value(text, "tensorgate_trace_records_dropped_total") == 0


def _set(stub: Any, model: str = "", **settings: list[str]) -> pb.TraceSettingResponse:
    request = pb.TraceSettingRequest(model_name=model)
    for key, values in settings.items():
        request.settings[key].value.extend(values)
    return stub.TraceSetting(request)


def _traced_ids(handle: Any, out: Path) -> set[str]:
    return {attributes(s)["triton.request_id"] for s in flushed_spans(handle, out) if s["name"] == "InferRequest"}


def test_trace_setting_changes_take_effect_globally_and_per_model(telemetry_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    with traced_server(telemetry_repo, f"opentelemetry,file={out}") as handle:  # level OFF at start
        stub = stub_for(handle)
        assert list(_set(stub).settings["trace_level"].value) == ["OFF"]
        stub.ModelInfer(simple_request("off"), metadata=(("traceparent", TRACEPARENT),))
        assert not handle.server.telemetry.tracer.active and _traced_ids(handle, out) == set()

        response = _set(stub, trace_level=["TIMESTAMPS"], trace_rate=["1"])
        assert list(response.settings["trace_rate"].value) == ["1"]
        stub.ModelInfer(simple_request("on"))
        assert _traced_ids(handle, out) == {"on"}

        model = _set(stub, "simple", trace_level=["OFF"])  # a per-model override
        assert list(model.settings["trace_level"].value) == ["OFF"]
        assert list(_set(stub).settings["trace_level"].value) == ["TIMESTAMPS"]  # global untouched
        stub.ModelInfer(simple_request("simple-off"))
        stub.ModelInfer(nobatch_request("nobatch-on"))
        assert _traced_ids(handle, out) == {"on", "nobatch-on"}

        _set(stub, "simple", trace_level=[])  # cleared: simple follows the global setting again
        stub.ModelInfer(simple_request("simple-on"))
        assert _traced_ids(handle, out) == {"on", "nobatch-on", "simple-on"}

        for bad in ({"trace_level": ["TENSORS"]}, {"trace_rate": ["-1"]}):
            with pytest.raises(grpc.RpcError) as info:
                _set(stub, **bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            _set(stub, "no_such_model", trace_rate=["1"])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown model" in info.value.details()

        _set(stub, trace_level=["OFF"])
        assert not handle.server.telemetry.tracer.active  # back to the one-check fast path


def test_a_failed_request_has_an_error_status_and_its_log_line_names_the_trace(
    telemetry_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "t.jsonl"
    caplog.set_level(logging.INFO, logger="tensorgate")
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=1", f"opentelemetry,file={out}") as handle:
        stub = stub_for(handle)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(failing_request("broken-1"), metadata=(("traceparent", TRACEPARENT),))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(failing_request("broken-2"))  # sampled by rate: its own trace id
        spans = flushed_spans(handle, out)
    tree = by_trace(spans, TRACE_ID)
    root, model, compute = tree["InferRequest"], tree["failing"], tree["compute"]
    assert root["status"] == {"code": 2, "message": "INTERNAL"} and attributes(root)["rpc.grpc.status_code"] == 13
    assert "COMPUTE_END" not in [e["name"] for e in compute["events"]]
    (batch,) = [s for s in spans if s["name"] == "batch" and s["links"][0]["spanId"] == model["spanId"]]
    assert batch["status"]["code"] == 2
    lines = [r for r in caplog.records if getattr(r, "request_id", "") == "broken-1"]
    assert lines and lines[0].trace_id == TRACE_ID and TRACE_ID in lines[0].getMessage()  # type: ignore[attr-defined]
    other = by_trace(spans, next(s["traceId"] for s in spans if attributes(s).get("triton.request_id") == "broken-2"))
    second = [r for r in caplog.records if getattr(r, "request_id", "") == "broken-2"]
    assert second and second[0].trace_id == other["InferRequest"]["traceId"]  # type: ignore[attr-defined]


def test_an_untraced_failure_still_logs_the_callers_trace_id(
    telemetry_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tensorgate")
    with traced_server(telemetry_repo) as handle:  # tracing off: the id comes from the metadata, on failure only
        with pytest.raises(grpc.RpcError):
            stub_for(handle).ModelInfer(failing_request("plain"), metadata=(("traceparent", TRACEPARENT),))
    (line,) = [r for r in caplog.records if getattr(r, "request_id", "") == "plain"]
    assert line.trace_id == TRACE_ID and line.grpc_code == "INTERNAL"  # type: ignore[attr-defined]


def test_tracing_off_is_one_check(telemetry_repo: Path, tmp_path: Path) -> None:
    with traced_server(telemetry_repo, f"opentelemetry,file={tmp_path / 't.jsonl'}") as handle:
        tracer = handle.server.telemetry.tracer
        assert not tracer.active and not tracing.ANY_ACTIVE
        stub_for(handle).ModelInfer(simple_request("x"), metadata=(("traceparent", TRACEPARENT),))
        assert not (tmp_path / "t.jsonl").exists() or not flushed_spans(handle, tmp_path / "t.jsonl")


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_both_flavours_trace_unary_and_streamed_requests(telemetry_repo: Path, tmp_path: Path, flavor: str) -> None:
    out = tmp_path / "t.jsonl"
    with traced_server(telemetry_repo, "level=TIMESTAMPS", "rate=0", f"opentelemetry,file={out}",
                       grpc_flavor=flavor, grpc_threads=8) as handle:
        stub = stub_for(handle)
        stub.ModelInfer(nobatch_request("unary"), metadata=(("traceparent", TRACEPARENT),))
        responses = list(stub.ModelStreamInfer(iter([nobatch_request("s1"), nobatch_request("s2")]),
                                               metadata=(("traceparent", TRACEPARENT),), timeout=30))
        assert [r.error_message for r in responses] == ["", ""]
        spans = flushed_spans(handle, out)
    roots = [s for s in spans if s["name"] == "InferRequest"]
    assert sorted(attributes(s)["triton.request_id"] for s in roots) == ["s1", "s2", "unary"]
    assert {s["traceId"] for s in roots} == {TRACE_ID} and {s["parentSpanId"] for s in roots} == {PARENT_ID}


def test_the_span_status_table_matches_the_servicers() -> None:
    """tracing.grpc_status mirrors servicer._STATUS (the one error-mapping point) for every public error."""
    for cls, code in _STATUS:
        assert tracing.grpc_status(cls("x")) == (code.value[0], code.name)
    assert tracing.grpc_status(ServerError("x")) == (13, "INTERNAL")
    assert tracing.grpc_status(None) == (0, "OK")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)),
        (TRACEPARENT.encode(), (int(TRACE_ID, 16), int(PARENT_ID, 16), 1)),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ],
)
def test_traceparent_parsing(header: Any, expected: Any) -> None:
    assert tracing.parse_traceparent(header) == expected


def test_an_unusable_trace_file_fails_the_start(telemetry_repo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError), traced_server(telemetry_repo, f"opentelemetry,file={blocker}/t.jsonl"):
        pass  # level OFF, but the exporter named at startup is opened at startup

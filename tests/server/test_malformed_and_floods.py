"""Malformed bodies answer INVALID_ARGUMENT; floods of one failure are summarised in the log, not logged per
request; queue-full rejections are counted in metrics (issue 11 part 6)."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from support import RunningServer, running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.server import servicer as servicer_module
from tensorgate.server.demo.models import build_add_sub, build_slow
from tensorgate.server.servicer import status_for
from tensorgate.server.telemetry.log_limits import LogSummary
from tensorgate.server.telemetry.metrics import ModelCollector

MALFORMED = (b"\xff\xff\xff", b"\x0a\x05ab", b"\x08", b"\x2a\x80", b"\x0a\x02\xc3\x28")  # the last: bad UTF-8
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    """Everything the server's and grpc's loggers write at INFO and above."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in ("tensorgate", "grpc")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield stream
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("floods")
    build_add_sub(repo / "simple" / "1" / "model.onnx")
    (repo / "simple" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
    build_slow(repo / "slow" / "1" / "model.onnx", size=512, steps=16)
    (repo / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 1\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"
        "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    )
    return repo


@pytest.fixture(scope="module", params=["aio", "thread"])
def server(repository: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(repository, grpc_flavor=request.param) as handle:
        yield handle


def _good() -> pb.ModelInferRequest:
    data = np.ones((1, 16), np.int32).tobytes()
    T = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(
        model_name="simple",
        inputs=[T(name="INPUT0", datatype="INT32", shape=[1, 16]), T(name="INPUT1", datatype="INT32", shape=[1, 16])],
        raw_input_contents=[data, data],
    )


def test_malformed_bodies_are_invalid_argument_and_quiet(server: RunningServer, captured: io.StringIO) -> None:
    channel = server.channel()
    raw = channel.unary_unary(INFER)  # no serializers: bytes go on the wire as they are
    for body in MALFORMED:
        with pytest.raises(grpc.RpcError) as info:
            raw(body, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in info.value.details() and len(info.value.details()) < 120
    metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
    with pytest.raises(grpc.RpcError) as info:
        metadata(b"\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelMetadataRequest" in info.value.details()
    # the services beside inference too: grpc's own parsing answered UNKNOWN (aio) / INTERNAL (thread)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "HealthCheckRequest" in info.value.details()
    reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as info:
        list(reflect(iter([b"\xff\xff"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # on a stream the bad message gets an error_message and the stream goes on
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    replies = [pb.ModelStreamInferResponse.FromString(r) for r in stream(iter([b"\xff", _good().SerializeToString()]))]
    assert "malformed request" in replies[0].error_message and not replies[1].error_message
    before = len(captured.getvalue())
    for i in range(500):
        with pytest.raises(grpc.RpcError):
            raw(MALFORMED[i % len(MALFORMED)], timeout=10)
    assert len(captured.getvalue()) == before, captured.getvalue()[before:][:2000]  # not one line for 500 bodies
    assert np.array_equal(
        np.frombuffer(pb.ModelInferResponse.FromString(raw(_good().SerializeToString())).raw_output_contents[0],
                      np.int32), np.full(16, 2, np.int32))


def test_queue_full_rejections_are_counted_and_summarised(server: RunningServer, captured: io.StringIO) -> None:
    servicer_module._SUMMARY.flush()
    servicer_module._SUMMARY.interval = 60.0  # the whole flood falls in one window
    stub = server.channel().unary_unary(INFER, pb.ModelInferRequest.SerializeToString,
                                        pb.ModelInferResponse.FromString)
    T = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(model_name="slow", inputs=[T(name="INPUT0", datatype="FP32", shape=[1, 4])],
                                   raw_input_contents=[np.ones((1, 4), np.float32).tobytes()])
    codes: list[grpc.StatusCode] = []

    def one() -> None:
        try:
            stub(request, timeout=60)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rejected = codes.count(grpc.StatusCode.UNAVAILABLE)
    assert rejected >= 20 and rejected + codes.count(grpc.StatusCode.OK) == 40
    lines = [line for line in captured.getvalue().splitlines() if "queue" in line]
    assert len(lines) == 1, lines  # the first rejection only, so far
    servicer_module._SUMMARY.flush()  # what a window's end (or the server's stop) writes
    summaries = [line for line in captured.getvalue().splitlines() if " more " in line]
    assert len(summaries) == 1 and f"queue full: {rejected - 1} more" in summaries[0], summaries
    mv = server.server.registry.find("slow")
    families = {m.name: m for m in ModelCollector(server.server.registry).collect()}
    samples = [s for s in families["tensorgate_inference_queue_full_total"].samples if s.labels["model"] == "slow"]
    assert samples[0].value == rejected
    assert mv.scheduler is not None and mv.scheduler.statistics.failure_reasons["REJECTED"] >= rejected
    servicer_module._SUMMARY.interval = 10.0


def test_unexpected_errors_log_one_traceback_per_kind_then_counts(captured: io.StringIO) -> None:
    summary = LogSummary(logging.getLogger("tensorgate.test-summary"), interval=0.3)
    saved = servicer_module._SUMMARY
    servicer_module._SUMMARY = summary
    try:
        for i in range(1000):
            try:
                raise KeyError(f"request-specific {i}")
            except KeyError as exc:
                assert status_for(exc, f"r{i}") == (grpc.StatusCode.INTERNAL, servicer_module._INTERNAL_MESSAGE)
        try:
            raise ZeroDivisionError("elsewhere")
        except ZeroDivisionError as other:
            status_for(other, "z")
        text = captured.getvalue()
        assert text.count("Traceback") == 2 and "request-specific 0" in text and "request-specific 1'" not in text
        time.sleep(0.8)
        text = captured.getvalue()
        assert "999 more in the last" in text and "KeyError at test_malformed_and_floods.py" in text
        assert text.count("more in the last") == 1  # the quiet kind writes nothing more
        for _ in range(3):  # after a quiet window the next one is logged in full again
            try:
                raise KeyError("again")
            except KeyError as exc:
                status_for(exc, "again")
        assert captured.getvalue().count("Traceback") == 3
    finally:
        summary.flush()
        servicer_module._SUMMARY = saved

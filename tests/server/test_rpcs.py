"""The remaining RPC surface: metadata, health, reflection, streaming, typed contents, UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.dataplane import EXTENSIONS

T = pb.ModelInferRequest.InferInputTensor


def stub_for(handle: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(handle.channel())


def simple_request(request_id: str, a: np.ndarray, b: np.ndarray, model: str = "simple") -> pb.ModelInferRequest:
    shape = list(a.shape)
    return pb.ModelInferRequest(
        model_name=model,
        id=request_id,
        inputs=[T(name="INPUT0", datatype="INT32", shape=shape), T(name="INPUT1", datatype="INT32", shape=shape)],
        raw_input_contents=[a.tobytes(), b.tobytes()],
    )


def test_server_metadata_lists_exactly_the_working_extensions(server: RunningServer) -> None:
    meta = stub_for(server).ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "tensorgate" and meta.version
    assert list(meta.extensions) == list(EXTENSIONS)
    assert "statistics" in meta.extensions and "model_configuration" in meta.extensions


def test_live_and_ready(server: RunningServer) -> None:
    stub = stub_for(server)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready


def test_health_is_serving_when_ready_whatever_the_service_name(server: RunningServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "inference.GRPCInferenceService", "anything"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_typed_contents_and_output_subset(server: RunningServer) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    request = pb.ModelInferRequest(
        model_name="simple",
        inputs=[
            T(name="INPUT0", datatype="INT32", shape=[1, 16], contents=pb.InferTensorContents(int_contents=a.ravel())),
            T(name="INPUT1", datatype="INT32", shape=[1, 16], contents=pb.InferTensorContents(int_contents=a.ravel())),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT1")],
    )
    response = stub_for(server).ModelInfer(request)
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert len(response.raw_output_contents) == 1
    assert not np.frombuffer(response.raw_output_contents[0], np.int32).any()


def test_classification_output(server: RunningServer) -> None:
    x = np.random.default_rng(1).standard_normal((2, 784)).astype(np.float32)
    stub = stub_for(server)
    plain = stub.ModelInfer(
        pb.ModelInferRequest(model_name="mlp", inputs=[T(name="INPUT0", datatype="FP32", shape=[2, 784])],
                             raw_input_contents=[x.tobytes()])
    )
    logits = np.frombuffer(plain.raw_output_contents[0], np.float32).reshape(2, 10)
    top = stub.ModelInfer(
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[T(name="INPUT0", datatype="FP32", shape=[2, 784])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
                name="OUTPUT0", parameters={"classification": pb.InferParameter(int64_param=3)})],
            raw_input_contents=[x.tobytes()],
        )
    )
    assert top.outputs[0].datatype == "BYTES" and list(top.outputs[0].shape) == [2, 3]
    from tensorgate.clients.codec import deserialize_bytes_tensor

    labels = deserialize_bytes_tensor(top.raw_output_contents[0], 6).reshape(2, 3)
    for row in range(2):
        indices = [int(item.decode().split(":")[1]) for item in labels[row]]
        assert indices == list(np.argsort(-logits[row])[:3])


def test_stream_keeps_going_after_a_failed_request(server: RunningServer) -> None:
    a = np.ones((1, 16), np.int32)
    requests = [
        simple_request("good-1", a, a),
        simple_request("bad", a, a, model="nope"),
        simple_request("good-2", a, 2 * a),
    ]
    responses = list(stub_for(server).ModelStreamInfer(iter(requests), timeout=30))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"good-1", "bad", "good-2"}
    assert "unknown model 'nope'" in by_id["bad"].error_message
    assert not by_id["good-2"].error_message
    assert np.frombuffer(by_id["good-2"].infer_response.raw_output_contents[0], np.int32)[0] == 3


def test_stream_with_triton_grpc_error_header_ends_with_status(server: RunningServer) -> None:
    a = np.ones((1, 16), np.int32)
    call = stub_for(server).ModelStreamInfer(
        iter([simple_request("bad", a, a, model="nope")]), metadata=(("triton_grpc_error", "true"),), timeout=30
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_trace_and_log_settings_answer(server: RunningServer) -> None:
    """The trace and logging extensions are advertised, so their RPCs answer (tests/telemetry go deeper)."""
    stub = stub_for(server)
    trace = stub.TraceSetting(pb.TraceSettingRequest())
    assert list(trace.settings["trace_level"].value) == ["OFF"]
    logs = stub.LogSettings(pb.LogSettingsRequest())
    assert {"log_info", "log_warning", "log_error", "log_verbose_level", "log_format", "log_file"} <= set(logs.settings)


def test_statistics_count_what_was_sent(server: RunningServer) -> None:
    stub = stub_for(server)

    def counts() -> tuple[int, int]:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="nobatch")).model_stats[0]
        return stats.inference_stats.success.count, stats.inference_count

    before = counts()
    a = np.ones((3, 16), np.float32)  # max_batch_size 0: the first dim is the model's own, not a batch
    for _ in range(5):
        stub.ModelInfer(
            pb.ModelInferRequest(
                model_name="nobatch",
                inputs=[T(name="INPUT0", datatype="FP32", shape=[3, 16]), T(name="INPUT1", datatype="FP32", shape=[3, 16])],
                raw_input_contents=[a.tobytes(), a.tobytes()],
            )
        )
    after = counts()
    assert after[0] - before[0] == 5 and after[1] - before[1] == 5

"""Bad input gets a clear status and message, and the server keeps serving (issue: core server)."""

from __future__ import annotations

import gc
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from support import RunningServer, running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

T = pb.ModelInferRequest.InferInputTensor
OK = np.arange(32, dtype=np.int32).reshape(2, 16)


def good_request(**overrides: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name="simple",
        id="req-1",
        inputs=[T(name="INPUT0", datatype="INT32", shape=[2, 16]), T(name="INPUT1", datatype="INT32", shape=[2, 16])],
        raw_input_contents=[OK.tobytes(), OK.tobytes()],
    )
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


def mutate(change: Callable[[pb.ModelInferRequest], None]) -> pb.ModelInferRequest:
    request = good_request()
    change(request)
    return request


def _wrong_rank(r: pb.ModelInferRequest) -> None:
    del r.inputs[0].shape[:]
    r.inputs[0].shape.extend([32])


def _wrong_dims(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[1] = 8
    r.raw_input_contents[0] = OK[:, :8].tobytes()


def _too_big_batch(r: pb.ModelInferRequest) -> None:
    big = np.zeros((9, 16), np.int32)
    for i in range(2):
        r.inputs[i].shape[0] = 9
        r.raw_input_contents[i] = big.tobytes()


def _both_contents(r: pb.ModelInferRequest) -> None:
    r.inputs[0].contents.int_contents.extend(OK.ravel().tolist())


def _bytes_overrun(r: pb.ModelInferRequest) -> None:
    del r.inputs[:]
    r.model_name = "strings"
    r.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
    del r.raw_input_contents[:]
    r.raw_input_contents.append(struct.pack("<I", 100) + b"short")


BAD_REQUESTS: dict[str, tuple[pb.ModelInferRequest, grpc.StatusCode, tuple[str, ...]]] = {
    "unknown model": (good_request(model_name="nope"), grpc.StatusCode.NOT_FOUND, ("nope",)),
    "unknown version": (good_request(model_version="7"), grpc.StatusCode.NOT_FOUND, ("simple", "7")),
    "non-numeric version": (good_request(model_version="latest"), grpc.StatusCode.NOT_FOUND, ("simple",)),
    "model not ready": (good_request(model_name="broken", model_version="1"), grpc.StatusCode.UNAVAILABLE, ("broken",)),
    "model without available versions": (
        good_request(model_name="broken"),
        grpc.StatusCode.NOT_FOUND,
        ("broken", "no available versions"),
    ),
    "wrong datatype": (
        mutate(lambda r: setattr(r.inputs[0], "datatype", "FP32")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT0", "FP32", "expected INT32"),
    ),
    "wrong rank": (mutate(_wrong_rank), grpc.StatusCode.INVALID_ARGUMENT, ("simple", "INPUT0", "expected [-1, 16]")),
    "wrong dims": (mutate(_wrong_dims), grpc.StatusCode.INVALID_ARGUMENT, ("simple", "INPUT0", "expected [-1, 16]")),
    "batch over max_batch_size": (
        mutate(_too_big_batch),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT0", "max_batch_size 8"),
    ),
    "raw size mismatch": (
        mutate(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 10)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT0", "expected 128 bytes", "got 10"),
    ),
    "missing input": (
        mutate(lambda r: (r.inputs.pop(), r.raw_input_contents.pop())),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "missing", "INPUT1"),
    ),
    "unknown input": (
        mutate(lambda r: setattr(r.inputs[1], "name", "INPUT9")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT9"),
    ),
    "input given twice": (
        mutate(lambda r: setattr(r.inputs[1], "name", "INPUT0")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT0", "twice"),
    ),
    "contents and raw together": (
        mutate(_both_contents),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT0", "raw_input_contents"),
    ),
    "fewer raw entries than inputs": (
        mutate(lambda r: r.raw_input_contents.pop()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "INPUT1", "raw_input_contents"),
    ),
    "more raw entries than inputs": (
        mutate(lambda r: r.raw_input_contents.append(b"\0" * 128)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "3 raw_input_contents"),
    ),
    "unknown requested output": (
        mutate(lambda r: r.outputs.add(name="OUTPUT7")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "OUTPUT7"),
    ),
    "bytes length prefix past the buffer": (
        mutate(_bytes_overrun),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("strings", "TEXT", "runs past"),
    ),
    "empty request": (pb.ModelInferRequest(model_name="simple"), grpc.StatusCode.INVALID_ARGUMENT, ("simple", "no inputs")),
    "reserved triton_ parameter": (
        mutate(lambda r: r.parameters["triton_made_up"].CopyFrom(pb.InferParameter(bool_param=True))),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "triton_made_up"),
    ),
    "priority of the wrong type": (
        mutate(lambda r: r.parameters["priority"].CopyFrom(pb.InferParameter(string_param="high"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("simple", "priority"),
    ),
}


def bad_input_repository(tmp_path_factory: pytest.TempPathFactory, test_repository: Path) -> Path:
    """simple and broken from the test repository, plus a BYTES identity model named strings."""
    import onnx
    from onnx import TensorProto, helper

    repo = tmp_path_factory.mktemp("badinput")
    for name in ("simple", "broken"):
        (repo / name).symlink_to(test_repository / name, target_is_directory=True)
    strings = repo / "strings" / "1"
    strings.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["OUT"])],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["b", 1])],
        [helper.make_tensor_value_info("OUT", TensorProto.STRING, ["b", 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(strings / "model.onnx"))
    return repo


@pytest.fixture(scope="module")
def bad_input_server(tmp_path_factory: pytest.TempPathFactory, test_repository: Path) -> Iterator[RunningServer]:
    with running_server(bad_input_repository(tmp_path_factory, test_repository)) as handle:
        yield handle


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_status_and_message(bad_input_server: RunningServer, case: str) -> None:
    request, code, fragments = BAD_REQUESTS[case]
    stub = pb_grpc.GRPCInferenceServiceStub(bad_input_server.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), (fragment, info.value.details())
    # and the server keeps serving
    response = stub.ModelInfer(good_request(), timeout=30)
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32).reshape(2, 16), OK * 2)


def test_tolerated_triton_parameter_and_custom_parameters(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    request = good_request()
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    request.parameters["my_custom"].string_param = "x"
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].int64_param = 10_000_000
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "req-1"


def test_message_over_the_configured_limit_is_refused_by_grpc(test_repository: Path) -> None:
    with running_server(test_repository, max_receive_message_bytes=1024) as handle:
        stub = pb_grpc.GRPCInferenceServiceStub(handle.channel())
        big = np.zeros((8, 16), np.int32)
        request = good_request()
        for i in range(2):
            request.inputs[i].shape[0] = 8
            request.raw_input_contents[i] = big.tobytes()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(good_request(), timeout=30).id == "req-1"


def test_ten_thousand_bad_requests_leave_memory_flat(bad_input_server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(bad_input_server.channel())
    process = psutil.Process()
    cases = [BAD_REQUESTS[name][0] for name in sorted(BAD_REQUESTS)]

    def hammer(count: int) -> None:
        futures = []
        for i in range(count):
            futures.append(stub.ModelInfer.future(cases[i % len(cases)], timeout=60))
            if len(futures) == 64:
                for f in futures:
                    assert f.exception() is not None
                futures.clear()
        for f in futures:
            assert f.exception() is not None

    hammer(2_000)  # warm-up: arenas, caches and interned strings settle
    gc.collect()
    before = process.memory_info().rss
    hammer(10_000)
    gc.collect()
    after = process.memory_info().rss
    assert after <= before * 1.05, f"RSS grew from {before} to {after} bytes"
    response = stub.ModelInfer(good_request(), timeout=30)
    assert np.array_equal(np.frombuffer(response.raw_output_contents[1], np.int32), np.zeros(32, np.int32))

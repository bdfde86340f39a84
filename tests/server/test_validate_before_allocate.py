"""A request's claimed shape is checked against the bytes it sent before anything is allocated for the claim
(issue 11 part 5): a 52-byte BYTES request claiming 2^27 elements once grew RSS by a gigabyte, 2^40 ended
as INTERNAL (MemoryError)."""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper

from support import RunningServer, running_server
from tensorgate.clients.codec import CodecError, deserialize_bytes_tensor
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

T = pb.ModelInferRequest.InferInputTensor
MiB = 2**20


def _identity(repo: Path, name: str, elem: int, config: str) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        name,
        [helper.make_tensor_value_info("X", elem, ["b", "n"])],
        [helper.make_tensor_value_info("Y", elem, ["b", "n"])],
    )
    (repo / name / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """texts: BYTES [-1, -1] identity; vectors: FP32 [-1, -1] identity; halves: BF16-free FP16 kin."""
    repo = tmp_path_factory.mktemp("claims")
    for name, elem, dtype in (("texts", TensorProto.STRING, "TYPE_STRING"), ("vectors", TensorProto.FLOAT, "TYPE_FP32")):
        _identity(repo, name, elem, f"""
name: "{name}"
max_batch_size: 4
input [ {{ name: "X" data_type: {dtype} dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: {dtype} dims: [ -1 ] }} ]
""")
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with running_server(repository, max_request_bytes=4 * MiB) as handle:
        yield handle


def _claim(model: str, datatype: str, shape: list[int], payload: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model, inputs=[T(name="X", datatype=datatype, shape=shape)], raw_input_contents=[payload]
    )


def _typed_claim(shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="vectors", inputs=[T(name="X", datatype="FP32", shape=shape)])
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    return request


# claims no bytes sent can back: each must answer INVALID_ARGUMENT at once, allocating nothing for the claim
HUGE_CLAIMS = {
    "bytes 2^27 in 52 bytes": _claim("texts", "BYTES", [1, 2**27], struct.pack("<I", 44) + b"x" * 44 + b"1234"),
    "bytes 4 x 2^26": _claim("texts", "BYTES", [4, 2**26], struct.pack("<I", 0) * 4),
    "bytes 2^40": _claim("texts", "BYTES", [1, 2**40], struct.pack("<I", 1) + b"x"),
    "bytes 2^62 with a zero dim": _claim("texts", "BYTES", [0, 2**62], b""),
    "fp32 2^40": _claim("vectors", "FP32", [1, 2**40], b"\0" * 16),
    "fp32 2^62 with a zero dim": _claim("vectors", "FP32", [0, 2**62], b""),
    "fp32 typed 2^40": _typed_claim([1, 2**40]),
}


def _refused(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    return info.value


@pytest.mark.parametrize("case", sorted(HUGE_CLAIMS))
def test_huge_claim_is_invalid_argument(server: RunningServer, case: str) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    error = _refused(stub, HUGE_CLAIMS[case])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "model '" in error.details() and "internal" not in error.details().lower()


def test_huge_claims_leave_rss_flat_and_answer_fast(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    process = psutil.Process()  # the server runs in this process
    requests = list(HUGE_CLAIMS.values())
    for request in requests:  # warm-up
        _refused(stub, request)
    gc.collect()
    before = process.memory_info().rss
    worst = 0.0
    for _ in range(20):
        for request in requests:
            started = time.perf_counter()
            _refused(stub, request)
            worst = max(worst, time.perf_counter() - started)
    gc.collect()
    after = process.memory_info().rss
    # before the fix one [1, 2^27] claim alone grew RSS by ~1 GiB; allow the noise of a shared box
    assert after - before < 16 * MiB, f"RSS grew from {before // MiB} to {after // MiB} MiB"
    assert worst < 5.0, f"a refusal took {worst:.2f} s"  # seconds-long stalls were the failure, not speed


def test_decoded_size_is_capped(server: RunningServer) -> None:
    """Each BYTES element costs ~41 bytes decoded: 120k one-byte strings (600 kB sent) decode to ~5 MB."""
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    count = 120_000
    payload = (struct.pack("<I", 1) + b"a") * count
    error = _refused(stub, _claim("texts", "BYTES", [1, count], payload))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-request-bytes" in error.details()
    small = 1000
    response = stub.ModelInfer(_claim("texts", "BYTES", [1, small], (struct.pack("<I", 1) + b"a") * small))
    assert response.outputs[0].shape == [1, small]
    big_fp32 = np.zeros((1, 2 * MiB // 4 + 1), np.float32)  # 2 MiB fits; twice that does not
    assert stub.ModelInfer(_claim("vectors", "FP32", list(big_fp32.shape), big_fp32.tobytes())).outputs
    over = np.zeros((2, 2 * MiB // 4 + 1), np.float32)
    error = _refused(stub, _claim("vectors", "FP32", list(over.shape), over.tobytes()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-request-bytes" in error.details()


def test_client_codec_checks_the_claim_before_allocating() -> None:
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    with pytest.raises(CodecError, match="4-byte length prefix"):
        deserialize_bytes_tensor(struct.pack("<I", 1) + b"x", 2**40)
    with pytest.raises(CodecError, match="4-byte length prefix"):
        deserialize_bytes_tensor(b"\0" * 8, 2**27)
    assert time.perf_counter() - started < 1.0
    assert process.memory_info().rss - before < 16 * MiB
    assert list(deserialize_bytes_tensor(struct.pack("<I", 2) + b"hi", 1)) == [b"hi"]

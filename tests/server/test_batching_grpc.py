"""The dynamic batcher over real gRPC, in both server flavours: batching, deadlines, queue limits, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from support import RunningServer, running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

T = pb.ModelInferRequest.InferInputTensor
SLOW = 'parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }\n'


@pytest.fixture(scope="module", params=["aio", "thread"])
def batching_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("batching")
    mlp = dict(builder="mlp", sizes=(784, 256, 10))
    # batches fill: 20 ms delay, no adaptive skipping
    write_model(repo, "mlp", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n"
                + SLOW + "instance_group [ { kind: KIND_CPU count: 1 } ]\n", **mlp)  # type: ignore[arg-type]
    # requests sit in the queue for 2 s unless the batch fills: room for deadlines and cancellation
    write_model(repo, "slow", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000000 }\n"
                + SLOW, **mlp)  # type: ignore[arg-type]
    write_model(repo, "bounded", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 1000000 "
                "default_queue_policy { max_queue_size: 2 } }\n" + SLOW, **mlp)  # type: ignore[arg-type]
    with running_server(Path(repo), grpc_flavor=request.param, grpc_threads=32) as handle:
        yield handle


def mlp_request(model: str, x: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model, id=request_id, inputs=[T(name="INPUT0", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.tobytes()],
    )


def stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]


def outputs(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(-1, 10)


def test_batched_outputs_equal_unbatched_bit_for_bit(batching_server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(batching_server.channel())
    xs = np.random.default_rng(7).standard_normal((12, 1, 784)).astype(np.float32)
    alone = [outputs(stub.ModelInfer(mlp_request("mlp", x), timeout=30)) for x in xs]
    before = stats(stub, "mlp")
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda x: outputs(stub.ModelInfer(mlp_request("mlp", x), timeout=30)), xs))
    after = stats(stub, "mlp")
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a, b)
    executions = after.execution_count - before.execution_count
    assert after.inference_count - before.inference_count == 12
    assert executions < 12, "concurrent requests should share batches"
    assert any(b.batch_size > 1 for b in after.batch_stats)


def test_grpc_deadline_in_the_queue_is_never_computed(batching_server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(batching_server.channel())
    before = stats(stub, "slow")
    x = np.ones((1, 784), np.float32)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(mlp_request("slow", x), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.5
    time.sleep(0.3)
    after = stats(stub, "slow")
    assert after.inference_count == before.inference_count  # never computed
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1


def test_full_queue_rejects_the_overflow_while_the_rest_succeed(batching_server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(batching_server.channel())
    x = np.ones((1, 784), np.float32)

    def call(i: int) -> str:
        try:
            stub.ModelInfer(mlp_request("bounded", x, str(i)), timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            assert "queue is full" in (exc.details() or ""), exc.details()
            return exc.code().name

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(call, range(6)))
    assert codes.count("OK") >= 2 and codes.count("UNAVAILABLE") >= 1
    assert set(codes) <= {"OK", "UNAVAILABLE"}


def test_cancelled_call_leaves_the_queue(batching_server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(batching_server.channel())
    before = stats(stub, "slow")

    async def cancel_one() -> None:
        async with grpc.aio.insecure_channel(batching_server.url) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                mlp_request("slow", np.ones((1, 784), np.float32)), timeout=30
            )
            await asyncio.sleep(0.2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(cancel_one())
    deadline = time.monotonic() + 5
    while stats(stub, "slow").inference_stats.fail.count == before.inference_stats.fail.count:
        assert time.monotonic() < deadline, "the cancelled request was not dropped"
        time.sleep(0.05)
    time.sleep(2.2)  # past the queue delay: had it stayed queued, it would have run by now
    assert stats(stub, "slow").inference_count == before.inference_count

"""AsyncInferenceClient against a real server: the happy paths and an error, each under asyncio.run."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients import AsyncInferenceClient, InferenceServerError, InferInput, InferRequestedOutput

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 5, dtype=np.int32)


def simple_inputs() -> list[InferInput]:
    return [
        InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(A),
        InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(B),
    ]


def test_health_and_metadata(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url) as client:
            assert await client.is_server_live() is True
            assert await client.is_server_ready() is True
            assert await client.is_model_ready("simple") is True
            assert await client.is_model_ready("broken") is False
            assert (await client.get_server_metadata()).name == "tensorgate"
            meta = await client.get_model_metadata("simple", as_json=True)
            assert [t["name"] for t in meta["inputs"]] == ["INPUT0", "INPUT1"]
            config = (await client.get_model_config("simple")).config
            assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
            index = {m.name: m.state for m in (await client.get_model_repository_index()).models}
            assert index["broken"] == "UNAVAILABLE" and index["simple"] == "READY"
            stats = await client.get_inference_statistics("simple")
            assert [s.name for s in stats.model_stats] == ["simple"]

    asyncio.run(run())


def test_concurrent_infers(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url) as client:
            results = await asyncio.gather(
                *(client.infer("simple", simple_inputs(), request_id=f"a-{i}") for i in range(8))
            )
            assert sorted(r.id for r in results) == sorted(f"a-{i}" for i in range(8))
            for result in results:
                total, diff = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
                assert total is not None and diff is not None
                assert np.array_equal(total, A + B) and np.array_equal(diff, A - B)
            only = await client.infer("simple", simple_inputs(), [InferRequestedOutput("OUTPUT1")])
            assert only.as_numpy("OUTPUT0") is None and only.as_numpy("OUTPUT1") is not None

    asyncio.run(run())


def test_errors_carry_the_status(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url) as client:
            with pytest.raises(InferenceServerError) as missing:
                await client.infer("no_such_model", simple_inputs())
            assert missing.value.status is grpc.StatusCode.NOT_FOUND
            assert isinstance(missing.value.__cause__, grpc.aio.AioRpcError)
            f = A.astype(np.float32)
            bad = [InferInput(n, [1, 16], "FP32").set_data_from_numpy(f) for n in ("INPUT0", "INPUT1")]
            with pytest.raises(InferenceServerError) as wrong:
                await client.infer("simple", bad)
            assert wrong.value.status is grpc.StatusCode.INVALID_ARGUMENT
            assert "simple" in wrong.value.message and "INPUT0" in wrong.value.message

    asyncio.run(run())

"""AsyncInferenceClient(multiplex=True): concurrent infers share one ModelStreamInfer stream, answer like unary."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients import AsyncInferenceClient, InferenceServerError, InferInput

A = np.arange(16, dtype=np.int32).reshape(1, 16)


def _inputs(k: int) -> list[InferInput]:
    return [InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(A + k),
            InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(np.ones((1, 16), np.int32))]


def _no_unary(client: AsyncInferenceClient) -> None:
    """The multiplexed path must never fall back to a unary ModelInfer."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a unary ModelInfer was made")

    client._stub.ModelInfer = refuse


def test_concurrent_infers_share_one_stream(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url, multiplex=True) as client:
            _no_unary(client)
            ids = [f"r{i % 5}" for i in range(64)]  # callers' ids may repeat: each answer still finds its caller
            results = await asyncio.gather(*(client.infer("simple", _inputs(i), request_id=rid)
                                             for i, rid in enumerate(ids)))
            for i, (rid, result) in enumerate(zip(ids, results, strict=True)):
                assert result.id == rid
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + i + 1)
            assert client._mux is not None and client._mux._call is not None

    asyncio.run(run())


def test_a_refused_request_fails_alone_and_the_stream_goes_on(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url, multiplex=True) as client:
            _no_unary(client)
            with pytest.raises(InferenceServerError) as info:
                await client.infer("no_such_model", _inputs(0), request_id="bad")
            assert info.value.request_id == "bad" and "no_such_model" in info.value.message
            assert (await client.infer("simple", _inputs(1))).as_numpy("OUTPUT0") is not None

    asyncio.run(run())


def test_client_timeout_answers_deadline_exceeded_and_drops_the_late_answer(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url, multiplex=True) as client:
            with pytest.raises(InferenceServerError) as info:
                await client.infer("simple", _inputs(0), client_timeout=1e-9, request_id="late")
            assert info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.request_id == "late"
            result = await client.infer("simple", _inputs(2), request_id="next")
            assert result.id == "next"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + 3)

    asyncio.run(run())


def test_calls_with_headers_go_unary(server: RunningServer) -> None:
    async def run() -> None:
        async with AsyncInferenceClient(server.url, multiplex=True) as client:
            result = await client.infer("simple", _inputs(0), headers={"x-tenant": "a"})
            assert result.as_numpy("OUTPUT0") is not None
            assert client._mux is not None and client._mux._call is None  # no stream was opened

    asyncio.run(run())


def test_a_failed_stream_fails_waiting_calls_and_the_next_call_reopens(test_repository: Path) -> None:
    handle = RunningServer(test_repository).start()

    async def run() -> None:
        async with AsyncInferenceClient(handle.url, multiplex=True) as client:
            assert (await client.infer("simple", _inputs(0))).as_numpy("OUTPUT0") is not None
            first = client._mux._call if client._mux else None
            await asyncio.get_running_loop().run_in_executor(None, handle.stop)
            with pytest.raises(InferenceServerError) as info:
                await asyncio.wait_for(client.infer("simple", _inputs(1)), 30)
            assert info.value.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert client._mux is not None and client._mux._call is not first  # a new stream was tried

    asyncio.run(run())


def test_bench_multiplex_measures_both_paths(server: RunningServer) -> None:
    from tensorgate.bench.multiplex import measure

    for multiplex in (False, True):
        window = asyncio.run(measure(server.url, multiplex, concurrency=2, seconds=0.5))
        assert window["infer_per_sec"] > 0 and window["errors"] == 0 and window["multiplex"] is multiplex

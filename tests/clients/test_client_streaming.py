"""ModelStreamInfer through both clients: many requests on one stream, a bad one does not end it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    InferInput,
    InferRequestedOutput,
    InferResult,
)

GOOD_IDS = ("s-0", "s-1", "s-3", "s-4")
BAD_ID = "s-2"


def inputs_for(k: int, datatype: str = "INT32") -> list[InferInput]:
    a = np.full((1, 16), k, dtype=np.float32 if datatype == "FP32" else np.int32)
    return [
        InferInput("INPUT0", a.shape, datatype).set_data_from_numpy(a),
        InferInput("INPUT1", a.shape, datatype).set_data_from_numpy(a),
    ]


def stream_requests() -> list[Any]:
    """Five requests in the three accepted forms; s-2 has the wrong datatype."""
    return [
        {"model_name": "simple", "inputs": inputs_for(0), "request_id": "s-0"},
        {
            "model_name": "simple",
            "inputs": inputs_for(1),
            "request_id": "s-1",
            "outputs": [InferRequestedOutput("OUTPUT0")],
        },
        {"model_name": "simple", "inputs": inputs_for(2, "FP32"), "request_id": BAD_ID},
        {"model_name": "simple", "inputs": inputs_for(3), "request_id": "s-3", "priority": 1},
        {"model_name": "simple", "inputs": inputs_for(4), "request_id": "s-4"},
    ]


def check_answers(items: list[InferResult | InferenceServerError]) -> None:
    assert len(items) == 5
    errors = [i for i in items if isinstance(i, InferenceServerError)]
    results = {i.id: i for i in items if isinstance(i, InferResult)}
    assert len(errors) == 1 and errors[0].request_id == BAD_ID
    assert "INPUT0" in errors[0].message and "simple" in errors[0].message
    assert set(results) == set(GOOD_IDS)
    for request_id, result in results.items():
        k = int(request_id.split("-")[1])
        total = result.as_numpy("OUTPUT0")
        assert total is not None and total.tolist() == [[2 * k] * 16]


def test_sync_stream_infer(server: RunningServer) -> None:
    with InferenceClient(server.url) as client:
        check_answers(list(client.stream_infer(iter(stream_requests()))))
        # the tuple form, twice on one stream
        items = list(client.stream_infer([("simple", inputs_for(5)), ("simple", inputs_for(6), None)]))
    totals = sorted(int(i.as_numpy("OUTPUT0")[0, 0]) for i in items if isinstance(i, InferResult))  # type: ignore[index]
    assert totals == [10, 12]


def test_sync_stream_bad_item_is_raised_after_earlier_answers(server: RunningServer) -> None:
    with InferenceClient(server.url) as client:
        seen: list[InferResult | InferenceServerError] = []
        with pytest.raises(TypeError, match="stream request"):
            for item in client.stream_infer([("simple", inputs_for(1)), 42]):  # type: ignore[list-item]
                seen.append(item)
    assert len(seen) == 1 and isinstance(seen[0], InferResult)


def test_sync_callback_stream(server: RunningServer) -> None:
    received: list[InferResult | InferenceServerError] = []
    lock = threading.Lock()

    def callback(result: InferResult | None, error: InferenceServerError | None) -> None:
        with lock:
            item = result if result is not None else error
            assert item is not None
            received.append(item)

    with InferenceClient(server.url) as client:
        client.start_stream(callback)
        with pytest.raises(RuntimeError):
            client.start_stream(callback)
        for kwargs in stream_requests():
            client.async_stream_infer(**kwargs)
        client.stop_stream()
        with pytest.raises(RuntimeError):
            client.async_stream_infer("simple", inputs_for(0))
    check_answers(received)


def test_async_stream_infer(server: RunningServer) -> None:
    async def requests() -> AsyncIterator[Any]:
        for item in stream_requests():
            await asyncio.sleep(0)
            yield item

    async def run() -> tuple[
        list[InferResult | InferenceServerError], list[InferResult | InferenceServerError]
    ]:
        async with AsyncInferenceClient(server.url) as client:
            from_async = [item async for item in client.stream_infer(requests())]
            from_sync_iterable = [item async for item in client.stream_infer(stream_requests())]
        return from_async, from_sync_iterable

    for items in asyncio.run(run()):
        check_answers(items)


def test_stream_to_unreachable_server_raises() -> None:
    with InferenceClient("127.0.0.1:1") as client, pytest.raises(InferenceServerError) as caught:
        list(client.stream_infer([("simple", inputs_for(0))], stream_timeout=5))
    assert caught.value.status is grpc.StatusCode.UNAVAILABLE


def test_headers_reach_the_server(server: RunningServer) -> None:
    # Triton's opt-in header: a failed request then ends the stream with its real status
    with InferenceClient(server.url) as client, pytest.raises(InferenceServerError) as caught:
        list(client.stream_infer(stream_requests(), headers={"Triton_GRPC_Error": "true"}))
    assert caught.value.status is grpc.StatusCode.INVALID_ARGUMENT and "INPUT0" in caught.value.message


def test_callback_stream_cancel(server: RunningServer) -> None:
    errors: list[InferenceServerError] = []

    def callback(result: InferResult | None, error: InferenceServerError | None) -> None:
        if error is not None:
            errors.append(error)

    with InferenceClient(server.url) as client:
        client.start_stream(callback)
        client.async_stream_infer("simple", inputs_for(1), request_id="c-1")
        client.stop_stream(cancel_requests=True)  # returns; the cancellation itself is not reported
        assert client.is_server_live()
    assert all(e.status is not grpc.StatusCode.CANCELLED for e in errors)

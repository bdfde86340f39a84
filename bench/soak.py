"""Memory soak and overload flood against a running server, with grpc.aio and many calls in flight."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .servers import ServerProcess

__all__ = ["flood", "soak"]


def _request() -> pb.ModelInferRequest:
    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 784])],
        raw_input_contents=[x.tobytes()],
    )


async def _drive(url: str, concurrency: int, seconds: float, server: ServerProcess,
                 samples: list[tuple[float, float]]) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    request = _request()
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    await stub.ModelInfer(request, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1

        async def sampler() -> None:
            start = time.monotonic()
            while time.monotonic() < deadline:
                samples.append((time.monotonic() - start, server.rss_mb()))
                await asyncio.sleep(1)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return codes


def soak(server: ServerProcess, seconds: int, concurrency: int = 32) -> dict[str, Any]:
    """RSS over `seconds` at `concurrency`; growth is measured from the 10 s mark on."""
    samples: list[tuple[float, float]] = []
    codes = asyncio.run(_drive(server.url, concurrency, seconds, server, samples))
    after_warmup = [rss for t, rss in samples if t >= 10] or [rss for _, rss in samples]
    base = after_warmup[0]
    return {"seconds": seconds, "concurrency": concurrency, "codes": dict(codes),
            "rss_mb_at_10s": base, "rss_mb_max": max(after_warmup),
            "growth_after_10s": max(after_warmup) / base - 1}


def flood(server: ServerProcess, concurrency: int, seconds: int) -> dict[str, Any]:
    """Far more calls in flight than the queue holds: the overflow must be UNAVAILABLE, memory bounded."""
    samples: list[tuple[float, float]] = []
    idle = server.rss_mb()
    codes = asyncio.run(_drive(server.url, concurrency, seconds, server, samples))
    return {"concurrency": concurrency, "seconds": seconds, "codes": dict(codes), "rss_mb_idle": idle,
            "rss_mb_max": max(rss for _, rss in samples)}

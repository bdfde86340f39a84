"""The response cache's worth: throughput and p50 at 0 %, 50 % and 100 % hit rates on the MLP, side by side.

    python -m tensorgate.bench.cache [--seconds 5] [--concurrency 8] [--rows 1]

One server (its own process) serves the bench MLP twice: ``mlp`` with
``response_cache { enable: true }`` under ``--cache-config local,size=...``, and
``mlp_nocache``, the same model without it. A closed loop of ``concurrency``
gRPC clients sends, for each hit rate, a mix of repeats of pre-warmed inputs
(hits) and never-seen inputs (misses: a counter written into the first value),
with the same load at 0 % against ``mlp_nocache`` before and after (the cache's
own cost on a miss; the two bracket the order's effect). The server's ModelStatistics confirm the hit rate each row achieved.
Ratios are against the 0 % row of the same run (the box is noisy: compare
ratios, not absolute figures). It drives the server over the wire only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .servers import start_tensorgate
from .throughput import MLP_SIZES

__all__ = ["main"]

_CONFIG = """max_batch_size: 64
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def build_repository(root: Path) -> Path:
    from tensorgate.server.demo.models import build_mlp

    for name, extra in (("mlp", "response_cache { enable: true }\n"), ("mlp_nocache", "")):
        build_mlp(root / name / "1" / "model.onnx", MLP_SIZES)
        (root / name / "config.pbtxt").write_text(_CONFIG + extra)
    return root


class _Inputs:
    """Request payloads: ``hot`` fixed inputs (hits once warmed) and an endless supply of new ones (misses)."""

    def __init__(self, rows: int, hot: int) -> None:
        rng = np.random.default_rng(0)
        self.rows = rows
        self.base = rng.random((rows, MLP_SIZES[0]), np.float32).tobytes()
        self.hot = [rng.random((rows, MLP_SIZES[0]), np.float32).tobytes() for _ in range(hot)]
        self.fresh = 0

    def new(self) -> bytes:
        self.fresh += 1  # floats are exact up to 2**24: every miss is a new input
        return struct.pack("<f", float(self.fresh) + 1000.0) + self.base[4:]

    def request(self, model: str, raw: bytes) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                       shape=[self.rows, MLP_SIZES[0]])
        return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])


async def _run(stub: Any, inputs: _Inputs, model: str, hit_rate: float, concurrency: int,
               seconds: float) -> dict[str, float]:
    latencies: list[int] = []
    counter = [0]
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            n = counter[0]
            counter[0] += 1
            # deterministic mix: request n is a hit when the running hit count is below n * rate
            is_hit = int((n + 1) * hit_rate) > int(n * hit_rate)
            raw = inputs.hot[n % len(inputs.hot)] if is_hit else inputs.new()
            start = time.perf_counter_ns()
            await stub.ModelInfer(inputs.request(model, raw))
            latencies.append(time.perf_counter_ns() - start)

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    values = np.array(latencies, np.int64)
    return {"requests": float(len(values)), "throughput": len(values) / elapsed,
            "p50_ms": float(np.percentile(values, 50)) / 1e6, "p99_ms": float(np.percentile(values, 99)) / 1e6}


def _cache_counts(stub: Any, model: str) -> tuple[int, int]:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_stats
    return int(stats.cache_hit.count), int(stats.cache_miss.count)


async def _measure(url: str, rates: Sequence[float], concurrency: int, seconds: float, rows: int,
                   sync_stub: Any) -> list[dict[str, Any]]:
    inputs = _Inputs(rows, hot=64)
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for raw in inputs.hot:  # warm: every hot input is cached before any row is measured
            await stub.ModelInfer(inputs.request("mlp", raw))
        await _run(stub, inputs, "mlp_nocache", 0.0, concurrency, 1.0)  # warm the connection and ORT
        rows_out = []
        # the uncached twin before and after the cached rows: the order's own effect shows as their spread
        for model, rate in [("mlp_nocache", 0.0)] + [("mlp", r) for r in rates] + [("mlp_nocache", 0.0)]:
            before = _cache_counts(sync_stub, model)
            result: dict[str, Any] = dict(await _run(stub, inputs, model, rate, concurrency, seconds))
            hits, misses = (a - b for a, b in zip(_cache_counts(sync_stub, model), before, strict=True))
            result.update(model=model, hit_rate=rate, measured_hit_rate=hits / max(1, hits + misses))
            rows_out.append(result)
    return rows_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensorgate.bench.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per row (default 5)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-cache-bench-") as tmp:
        repo = build_repository(Path(tmp))
        server = start_tensorgate(repo, ["--cache-config", f"local,size={64 * 2**20}"])
        try:
            with grpc.insecure_channel(server.url) as channel:
                sync_stub = pb_grpc.GRPCInferenceServiceStub(channel)
                rows = asyncio.run(_measure(server.url, (0.0, 0.5, 1.0), args.concurrency, args.seconds,
                                            args.rows, sync_stub))
        finally:
            server.stop()
    base = rows[1]  # the cached model at 0 % hits
    print(f"MLP {MLP_SIZES}, {args.rows} row(s)/request, concurrency {args.concurrency}, {args.seconds:g} s per row")
    print(f"{'model':12s} {'hit rate':>8s} {'measured':>8s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'req/s ratio':>11s} {'p50 ratio':>9s}")
    for row in rows:
        print(f"{row['model']:12s} {row['hit_rate']:8.0%} {row['measured_hit_rate']:8.1%} {row['throughput']:8.0f} "
              f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['throughput'] / base['throughput']:11.2f} "
              f"{row['p50_ms'] / base['p50_ms']:9.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

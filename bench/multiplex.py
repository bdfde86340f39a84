"""The asyncio client unary vs multiplexed over one stream, side by side against one server.

    python -m tensorgate.bench.multiplex [--concurrency 32] [--seconds 6] [--rounds 3] [--delay-us 2000]

Starts tensorgate on the benchmark MLP (bench.throughput's repository), then alternates closed-loop windows of
``AsyncInferenceClient(multiplex=False)`` and ``(multiplex=True)`` at the same concurrency (the order flips
each round: the box is shared and noisy) and prints each window and the median ratio multiplexed / unary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tensorgate.clients import AsyncInferenceClient, InferInput

from .servers import start_tensorgate
from .throughput import build_repository

__all__ = ["main", "measure"]


async def measure(url: str, multiplex: bool, concurrency: int, seconds: float) -> dict[str, Any]:
    """Closed loop: ``concurrency`` tasks, each sending its next request when its answer arrives."""
    data = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    latencies: list[float] = []
    errors = 0
    async with AsyncInferenceClient(url, multiplex=multiplex) as client:
        warm_until = time.monotonic() + 1.0
        stop = warm_until + seconds

        async def worker() -> None:
            nonlocal errors
            tensor = InferInput("INPUT0", [1, 784], "FP32").set_data_from_numpy(data)
            while (now := time.monotonic()) < stop:
                try:
                    await client.infer("mlp", [tensor])
                except Exception:
                    errors += 1
                    continue
                if now >= warm_until:
                    latencies.append(time.monotonic() - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    count = len(latencies)
    return {"multiplex": multiplex, "infer_per_sec": count / seconds, "errors": errors,
            "p50_ms": latencies[count // 2] * 1e3 if count else None,
            "p99_ms": latencies[int(count * 0.99)] * 1e3 if count else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--delay-us", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tg-mux-") as tmp:
        server = start_tensorgate(build_repository(Path(tmp), args.delay_us, 1, 1), ["--allow-metrics", "false"])
        try:
            for round_ in range(args.rounds):
                for multiplex in (False, True) if round_ % 2 == 0 else (True, False):
                    w = asyncio.run(measure(server.url, multiplex, args.concurrency, args.seconds))
                    windows.append(w)
                    print(f"round {round_ + 1} {'multiplexed' if multiplex else 'unary      '} "
                          f"{w['infer_per_sec']:7.0f} infer/s  p50 {w['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f} ms"
                          f"  errors {w['errors']}", flush=True)
        finally:
            server.stop()
    unary = statistics.median(w["infer_per_sec"] for w in windows if not w["multiplex"])
    mux = statistics.median(w["infer_per_sec"] for w in windows if w["multiplex"])
    print(f"median at concurrency {args.concurrency}: unary {unary:.0f}, multiplexed {mux:.0f} infer/s "
          f"-> {mux / unary:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"windows": windows, "ratio": mux / unary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

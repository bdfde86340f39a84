"""REST vs gRPC on one server: perf_analyzer ``-i http`` and ``-i grpc`` against the same process, interleaved.

    python -m tensorgate.bench.rest_vs_grpc [--concurrency 8,32] [--window-ms 4000] [--repeats 2]

One `tensorgate serve` holds the MLP (784-1024-1024-10, dynamic batching, as bench.throughput builds it) and
serves both protocols from one data plane and one batcher, so the ratio REST/gRPC is the cost of the front end
alone. Runs alternate protocol order each repeat (the box is noisy: read the ratios, not the absolutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from .perf_analyzer import run_perf_analyzer
from .servers import free_port, start_tensorgate
from .throughput import build_repository

__all__ = ["main", "run"]

PROTOCOLS = ("grpc", "http")


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-rest-bench-") as tmp:
        repo = build_repository(Path(tmp), args.delay_us, 1, 1)
        http_port = free_port()
        server = start_tensorgate(repo, ["--http-port", str(http_port)])
        urls = {"grpc": server.url, "http": f"127.0.0.1:{http_port}"}
        try:
            for rep in range(args.repeats):
                for c in args.concurrency:
                    for protocol in PROTOCOLS if rep % 2 == 0 else reversed(PROTOCOLS):
                        for _ in range(3):  # a shared box can spoil even the loose stability rule: measure again
                            r = run_perf_analyzer(urls[protocol], "mlp", c, window_ms=args.window_ms,
                                                  stability_percentage=1000, max_trials=3, protocol=protocol)
                            if not any("stable" in e for e in r.errors):
                                break
                        if r.errors:
                            raise RuntimeError(f"perf_analyzer -i {protocol} c={c}: {r.errors[:3]}\n{r.output[-2000:]}")
                        m = {"infer_per_sec": r.infer_per_sec, "p50_ms": r.p50_us / 1000, "batch": r.mean_batch}
                        runs.setdefault((c, protocol), []).append(m)
                        print(f"  rep {rep + 1} c={c:<3} {protocol:<4} {m['infer_per_sec']:7.0f} infer/s  "
                              f"p50 {m['p50_ms']:6.2f} ms  batch {m['batch']:4.1f}", flush=True)
        finally:
            server.stop()
    rows = []
    for c in args.concurrency:
        med = {p: statistics.median(x["infer_per_sec"] for x in runs[(c, p)]) for p in PROTOCOLS}
        p50 = {p: statistics.median(x["p50_ms"] for x in runs[(c, p)]) for p in PROTOCOLS}
        rows.append({"concurrency": c, "grpc_infer_per_sec": med["grpc"], "http_infer_per_sec": med["http"],
                     "http_over_grpc": med["http"] / med["grpc"] if med["grpc"] else 0.0,
                     "grpc_p50_ms": p50["grpc"], "http_p50_ms": p50["http"]})
    return {"rows": rows, "repeats": args.repeats, "window_ms": args.window_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensorgate.bench.rest_vs_grpc", description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default=[8, 32], type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--window-ms", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--delay-us", type=int, default=1000, help="max_queue_delay_microseconds")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(args)
    print(f"\n{'c':>3}  {'gRPC infer/s':>12}  {'REST infer/s':>12}  {'REST/gRPC':>9}  {'gRPC p50':>9}  {'REST p50':>9}")
    for r in result["rows"]:
        print(f"{r['concurrency']:>3}  {r['grpc_infer_per_sec']:>12.0f}  {r['http_infer_per_sec']:>12.0f}  "
              f"{r['http_over_grpc']:>9.2f}  {r['grpc_p50_ms']:>7.2f}ms  {r['http_p50_ms']:>7.2f}ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

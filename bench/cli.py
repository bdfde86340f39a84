"""`tensorgate bench` / `python -m tensorgate.bench`: load-test any KServe v2 / Triton gRPC server.

    tensorgate bench --url 127.0.0.1:8001 --model mlp --concurrency 1,8,32 --json out.json --csv out.csv
    tensorgate bench --url HOST:PORT --model mlp --request-rate 500,1000 --poisson
    tensorgate bench --url HOST:PORT --model mlp --ceiling --model-file repo/mlp/1/model.onnx --plot out.png
    tensorgate bench compare A.json B.json

Exit status: 0; 1 when a level's error rate (failed requests and dropped sends over all its windows)
exceeds --max-error-rate; 2 on bad arguments or when the run cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from tensorgate.clients import InferenceServerError

from .inputs import parse_shapes
from .runner import BenchConfig, BenchError, NullProgress, Progress, run_bench

__all__ = ["build_parser", "main"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tensorgate bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", "-u", default="127.0.0.1:8001", help="HOST:PORT of the gRPC server (default %(default)s)")
    p.add_argument("--model", "-m", required=True, help="model name")
    p.add_argument("--model-version", "-x", default="", help="model version (default: the server's choice)")
    load = p.add_argument_group("load")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=_ints, help="closed loop: requests in flight, e.g. 1,8,32 (default 1)")
    mode.add_argument("--request-rate", type=_floats, help="open loop: requests per second, e.g. 500,1000")
    load.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals (default constant)")
    load.add_argument("--streaming", action="store_true", help="send over ModelStreamInfer instead of ModelInfer")
    load.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request (default 1)")
    load.add_argument("--timeout-ms", type=float, default=0, help="request deadline (default none)")
    load.add_argument("--max-inflight", type=int, default=256,
                      help="open loop: most requests scheduled or in flight at once (default %(default)s)")
    load.add_argument("--late-ms", type=float, default=2.0,
                      help="open loop: a send this far behind its schedule counts as late (default %(default)s)")
    data = p.add_argument_group("inputs")
    data.add_argument("--input-data", default="random",
                      help="random, zero, or a .npz / perf_analyzer-style .json file (default random)")
    data.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS",
                      help="dims of an input with variable dims, batch dim excluded (repeatable), e.g. INPUT0:3,224")
    data.add_argument("--string-length", type=int, default=16, help="length of random BYTES elements")
    measure = p.add_argument_group("measurement")
    measure.add_argument("--warmup-s", type=float, default=2.0, help="warm-up per level, not measured")
    measure.add_argument("--window-ms", type=float, default=5000, help="measurement window (default 5000)")
    measure.add_argument("--stability-percentage", type=float, default=10,
                         help="last 3 windows' throughput and p99 must agree within this (default 10)")
    measure.add_argument("--max-windows", type=int, default=10, help="windows per level at most (default 10)")
    measure.add_argument("--max-seconds", type=float, default=60, help="time per level at most (default 60)")
    measure.add_argument("--client-processes", type=int, default=1, help="load generator processes (default 1)")
    measure.add_argument("--channels", type=int, default=0,
                         help="gRPC connections per level (default: one per 6 concurrent requests, at most 16)")
    measure.add_argument("--engine", choices=("auto", "aio", "thread"), default="auto",
                         help="closed-loop unary calls: grpc.aio, or blocking calls in one thread per request in "
                         "flight; auto = thread at concurrency 1 (lower client latency), aio otherwise")
    measure.add_argument("--no-server-stats", action="store_true", help="do not read ModelStatistics")
    measure.add_argument("--shared-memory", choices=("none", "system", "cuda"), default="none",
                         help="pass tensors through system shared memory, or CUDA device memory on GPU 0 (needs "
                              "the server's extension; cuda needs a GPU and cuda-python here too)")
    ceiling = p.add_argument_group("ceilings")
    ceiling.add_argument("--ceiling", action="store_true",
                         help="also measure bare gRPC echo servers (grpc.aio, thread pool) with the same load and, "
                         "with --model-file, ONNX Runtime in-process; print ratios")
    ceiling.add_argument("--model-file", type=Path, help="the model's .onnx file for the in-process ceiling")
    ceiling.add_argument("--ceiling-seconds", type=float, default=3.0, help="seconds per ONNX Runtime batch size")
    ceiling.add_argument("--ceiling-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the report as JSON")
    out.add_argument("--csv", type=Path, help="write one CSV row per level")
    out.add_argument("--plot", type=Path, help="write a PNG of throughput and p50/p99 (needs matplotlib)")
    out.add_argument("--quiet", "-q", action="store_true", help="no live progress")
    out.add_argument("--max-error-rate", type=float, default=0.0,
                     help="exit 1 when a level's error rate exceeds this fraction (default 0)")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """argparse's namespace -> BenchConfig (ValueError on nonsense values)."""
    if args.batch_size < 1 or args.client_processes < 1 or args.window_ms <= 0:
        raise ValueError("-b, --client-processes and --window-ms must be positive")
    if args.request_rate and any(r <= 0 for r in args.request_rate):
        raise ValueError("--request-rate values must be positive")
    if args.concurrency and any(c < 1 for c in args.concurrency):
        raise ValueError("--concurrency values must be at least 1")
    return BenchConfig(
        url=args.url, model=args.model, model_version=args.model_version, concurrency=args.concurrency or [],
        request_rate=args.request_rate or [], poisson=args.poisson, streaming=args.streaming,
        batch_size=args.batch_size, data=args.input_data, shapes=parse_shapes(args.shape),
        string_length=args.string_length, timeout_s=args.timeout_ms / 1e3 if args.timeout_ms > 0 else None,
        warmup_s=args.warmup_s, window_s=args.window_ms / 1e3, stability=args.stability_percentage / 100,
        max_windows=max(1, args.max_windows), max_seconds=args.max_seconds, client_processes=args.client_processes,
        channels=args.channels, max_inflight=max(1, args.max_inflight), late_ms=args.late_ms, engine=args.engine,
        server_stats=not args.no_server_stats, shared_memory=args.shared_memory, ceiling=args.ceiling,
        model_file=args.model_file, ceiling_seconds=args.ceiling_seconds, ceiling_threads=args.ceiling_threads,
    )


def _exceeded(report: dict[str, object], limit: float) -> list[str]:
    results = report["results"]
    assert isinstance(results, list)
    return [f"{r.get('concurrency', r.get('request_rate'))}: error rate {r['error_rate_all_windows']:.2%}"
            for r in results if r["error_rate_all_windows"] > limit]


def _error(text: str) -> None:
    print(f"tensorgate bench: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        _error(str(exc))
        return 2
    if args.plot:
        from .plot import PlotUnavailable, check_plot_available

        try:
            check_plot_available()
        except PlotUnavailable as exc:
            _error(str(exc))
            return 2
    try:
        if args.quiet:
            report = asyncio.run(run_bench(config, NullProgress()))
        else:
            from .live import LiveProgress

            with LiveProgress(Console(stderr=True)) as live:
                progress: Progress = live
                report = asyncio.run(run_bench(config, progress))
    except (BenchError, InferenceServerError) as exc:
        _error(str(exc))
        return 2
    from .report import print_report, write_csv, write_json

    print_report(report)
    if args.json:
        write_json(report, args.json)
    if args.csv:
        write_csv(report, args.csv)
    if args.plot:
        from .plot import PlotUnavailable, plot_report

        try:
            plot_report(report, args.plot)
        except PlotUnavailable as exc:
            _error(str(exc))
            return 2
    exceeded = _exceeded(report, args.max_error_rate)
    if exceeded:
        _error(f"error rate above --max-error-rate {args.max_error_rate:g}: " + "; ".join(exceeded))
        return 1
    return 0

"""Engine core modes side by side: the bare echoes, tensorgate inline, process and --frontends 2.

    python -m tensorgate.bench.core_compare [--concurrency 1,8,32] [--seconds 3] [--sizes 784,1024,1024,10]
                                            [--modes unary,streaming] [--cpu] [--json out.json]

Model: the held-out MLP (784->1024->1024->10 fp32 unless --sizes), max_batch_size 64, dynamic batching
(2000 us, adaptive), batch-1 requests of random data. Load: tensorgate bench's closed-loop grpc.aio
generator (bench.load) in this process. For each concurrency and mode every server gets one window in
turn (servers all started first, idle while another is measured), so the ratios come from the same
minutes of a noisy shared box. Ratios are to the faster echo's unary figure at the same concurrency
(issue 13's targets); at the end, the in-process ONNX Runtime ceiling at the mean batch tensorgate formed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tensorgate.clients import AsyncInferenceClient, InferenceServerError

from .ceilings import ort_ceiling
from .inputs import build_requests, discover_model
from .load import LoadGenerator, LoadSpec
from .proc_cpu import cpu_sample, cpu_split
from .servers import ServerProcess, start_echo, start_tensorgate
from .throughput import MLP_SIZES, build_repository

__all__ = ["main"]

SERVERS = ("echo aio", "echo thread", "tg inline", "tg process", "tg frontends 2", "tg process thread-reader")


async def _requests(url: str) -> tuple[tuple[bytes, int], ...]:
    async with AsyncInferenceClient(url, retry=False) as client:
        model = await discover_model(client, "mlp")
    return tuple((r.payload, r.rows) for r in build_requests(model, batch_size=1))


async def _counts(url: str) -> tuple[int, int]:
    """The mlp's (inference_count, execution_count) so far; (0, 0) from a server without statistics (an echo)."""
    try:
        async with AsyncInferenceClient(url, retry=False) as client:
            stats = await client.get_inference_statistics("mlp")
    except InferenceServerError as exc:
        if exc.status != grpc.StatusCode.UNIMPLEMENTED:  # the echoes answer no statistics; anything else fails
            raise
        return 0, 0
    return sum(s.inference_count for s in stats.model_stats), sum(s.execution_count for s in stats.model_stats)


async def _window(url: str, requests: tuple[tuple[bytes, int], ...], concurrency: int, streaming: bool,
                  seconds: float, server_pid: int = 0) -> dict[str, Any]:
    gen = LoadGenerator(LoadSpec(url=url, requests=requests, concurrency=concurrency, streaming=streaming,
                                 timeout_s=30.0, engine="aio"))
    await gen.start()
    try:
        await asyncio.sleep(min(1.0, seconds / 3))  # warm: connections up, batch sizes settled
        gen.cut()
        counts_before = await _counts(url)
        before, client_before = (cpu_sample(server_pid) if server_pid else {}), time.process_time()
        await asyncio.sleep(seconds)
        sample = gen.cut()
        after, client_after = (cpu_sample(server_pid) if server_pid else {}), time.process_time()
        counts_after = await _counts(url)
    finally:
        await gen.stop()
    hist = sample.histogram
    result: dict[str, Any] = {"infer_per_sec": sample.infer_per_sec, "p50_ms": hist.percentile_ns(50) / 1e6,
                              "p99_ms": hist.percentile_ns(99) / 1e6, "errors": sample.error_count}
    executions = counts_after[1] - counts_before[1]
    if executions > 0:  # the server's own count: the batch size to compare with in-process ONNX Runtime
        result["mean_batch"] = round((counts_after[0] - counts_before[0]) / executions, 1)
    if server_pid:
        requests_done = max(1, round(sample.infer_per_sec * seconds))
        result["cpu"] = cpu_split(before, after, server_pid, requests_done)
        result["cpu"]["client_us_per_request"] = round((client_after - client_before) * 1e6 / requests_done, 1)
    return result


def _start(repo: Path, name: str) -> ServerProcess:
    extra = {"tg inline": ["--engine-core", "inline"], "tg process": ["--engine-core", "process"],
             "tg frontends 2": ["--frontends", "2"], "tg process thread-reader": ["--engine-core", "process"]}[name]
    # the event loop reads the core's answers (the default) unless told to use a reader thread
    os.environ["TENSORGATE_CORE_READER"] = "thread" if name.endswith("thread-reader") else "loop"
    try:
        return start_tensorgate(repo, extra=[*extra, "--allow-http", "false"])
    finally:
        os.environ.pop("TENSORGATE_CORE_READER", None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"model": "mlp " + "->".join(map(str, args.sizes)), "seconds": args.seconds,
                              "levels": []}
    with tempfile.TemporaryDirectory(prefix="tg-core-compare-") as tmp:
        repo = build_repository(Path(tmp), 2000, 1, args.threads, sizes=args.sizes)
        servers: dict[str, ServerProcess] = {}
        try:
            for name in SERVERS[2:]:
                if name in args.servers:
                    servers[name] = _start(repo, name)
            like = next(iter(servers.values())).url
            for name, flavour in (("echo aio", "aio"), ("echo thread", "thread")):
                servers[name] = start_echo(flavour, like, "mlp")
            requests = await _requests(like)
            print(f"{report['model']}, batch-1 requests, {args.seconds:g} s windows; ratio = infer/s over the "
                  "faster echo's unary at the same concurrency", flush=True)
            print(f"  {'server':<16} {'mode':<9} {'infer/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} "
                  f"{'p99/echo':>8} errors", flush=True)
            for concurrency in args.concurrency:
                level: dict[str, Any] = {"concurrency": concurrency, "results": {}}
                for mode in args.modes:
                    for name, server in servers.items():
                        if mode == "streaming" and name.startswith("echo"):
                            continue  # the target compares streaming to the echo's unary
                        level["results"][f"{name}/{mode}"] = await _window(
                            server.url, requests, concurrency, mode == "streaming", args.seconds,
                            server.pid if args.cpu else 0)
                echoes = [level["results"][f"{e}/unary"] for e in ("echo aio", "echo thread")
                          if f"{e}/unary" in level["results"]]
                best = max(echoes, key=lambda r: r["infer_per_sec"]) if echoes else None
                for key, r in level["results"].items():
                    r["ratio"] = r["infer_per_sec"] / best["infer_per_sec"] if best and best["infer_per_sec"] else 0.0
                    r["p99_vs_echo"] = r["p99_ms"] / best["p99_ms"] if best and best["p99_ms"] else 0.0
                    name, mode = key.split("/")
                    print(f"  {name:<16} {mode:<9} {r['infer_per_sec']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                          f"{r['ratio']:6.2f} {r['p99_vs_echo']:8.2f} {r['errors']:6d}   c={concurrency}"
                          + (f", mean batch {r['mean_batch']}" if "mean_batch" in r else ""), flush=True)
                    if "cpu" in r:
                        cpu = r["cpu"]
                        split = ", ".join(f"{k} {v:.0f}" for k, v in cpu["us_per_request"].items())
                        print(f"      CPU us/request: {split}; client {cpu['client_us_per_request']:.0f}", flush=True)
                        busy = ", ".join(f"{k} {v:.0f}" for k, v in cpu["busiest_threads_us_per_request"].items())
                        print(f"      busiest threads: {busy}", flush=True)
                report["levels"].append(level)
        finally:
            for server in servers.values():
                server.stop()
        if args.ort:
            batches = {round(r["mean_batch"]) for level in report["levels"] for r in level["results"].values()
                       if r.get("mean_batch")}
            sizes = sorted({1, max(args.concurrency)} | {b for b in batches if b > 0})
            ort = ort_ceiling(repo / "mlp" / "1" / "model.onnx", sizes, 3, args.threads)
            report["ort_in_process"] = ort
            print("in-process ONNX Runtime: " + ", ".join(f"batch {b}: {v:.0f} infer/s" for b, v in ort.items()),
                  flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default=[1, 8, 32], type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per server and level")
    parser.add_argument("--sizes", default=MLP_SIZES, type=lambda s: tuple(int(x) for x in s.split(",")))
    parser.add_argument("--modes", default=["unary", "streaming"], type=lambda s: s.split(","))
    parser.add_argument("--servers", default=list(SERVERS[2:5]), type=lambda s: s.split(","),
                        help=f"tensorgate servers to measure (of {', '.join(SERVERS[2:])})")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--ort", action="store_true", help="also the in-process ONNX Runtime ceiling")
    parser.add_argument("--cpu", action="store_true",
                        help="also each server's CPU per request, per process and busiest threads (/proc)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

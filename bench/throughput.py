"""The throughput benchmark: tensorgate against its ceilings, measured side by side in one run.

    python -m tensorgate.bench.throughput [--concurrency 1,8,32] [--window-ms 10000] [--delay-us 1000] [--json out.json]

Model: an MLP 784->1024->1024->10 fp32 built with onnx.helper, max_batch_size 64,
dynamic batching; batch-1 requests with random data; perf_analyzer 2.51 as the
load generator on this machine. For every concurrency it measures, interleaved:
the grpc.aio echo, the thread-pool echo (responses of the model's size), and
tensorgate; and tensorgate serving a no-op model with the MLP's inputs and outputs
(OUTPUT0 = the first 10 columns of INPUT0), which shows what the server itself costs
with the engine's work taken away; then the in-process ONNX Runtime ceiling at
batch 1 and at the mean batch tensorgate formed, on an idle box and again while
perf_analyzer drives the echo beside it (the cores and memory bandwidth as busy as
serving makes them). Optional: a memory soak at concurrency 32 and a flood
far beyond capacity against a bounded queue. Every figure is printed as a ratio
to a ceiling from the same run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .perf_analyzer import PerfResult, run_perf_analyzer
from .servers import ServerProcess, start_echo, start_tensorgate
from .soak import flood, soak

__all__ = ["main"]

MLP_SIZES = (784, 1024, 1024, 10)
FLOOD_SIZES = (784, 4096, 4096, 10)


def _config(delay_us: int, instances: int, threads: int, max_queue: int, preferred: int = 0,
            adaptive: bool = True) -> str:
    queue = f" default_queue_policy {{ max_queue_size: {max_queue} }}" if max_queue else ""
    prefer = f" preferred_batch_size: [ {preferred} ]" if preferred else ""
    return (
        f'name: "mlp"\nmax_batch_size: 64\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us}{prefer}{queue} }}\n"
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
        f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}\n'
        f'parameters {{ key: "adaptive_queue_delay" value: {{ string_value: "{str(adaptive).lower()}" }} }}\n'
    )


def build_repository(root: Path, delay_us: int, instances: int, threads: int, max_queue: int = 0,
                     sizes: tuple[int, ...] = MLP_SIZES, preferred: int = 0, adaptive: bool = True,
                     no_op: bool = False) -> Path:
    """A repository with the model "mlp"; ``no_op``: the same inputs and outputs, no compute."""
    from tensorgate.server.demo.models import build_first_columns, build_mlp

    model_dir = root / "mlp"
    if no_op:
        build_first_columns(model_dir / "1" / "model.onnx", sizes[0], sizes[-1])
    else:
        build_mlp(model_dir / "1" / "model.onnx", sizes)
    (model_dir / "config.pbtxt").write_text(_config(delay_us, instances, threads, max_queue, preferred, adaptive))
    return root


def _ceiling(model_file: Path, batches: list[int], seconds: float, threads: int) -> list[dict[str, float]]:
    out = subprocess.run(
        [sys.executable, "-m", "tensorgate.bench.ceiling", "--model-file", str(model_file), "--batch",
         ",".join(map(str, batches)), "--seconds", str(seconds), "--threads", str(threads)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _ceiling_beside_load(model_file: Path, batch: int, threads: int, echo_url: str, concurrency: int,
                         mode: str) -> dict[str, float]:
    """The in-process ceiling while perf_analyzer drives the grpc.aio echo at `concurrency` on this machine.

    Serving shares the cores (and memory bandwidth) with gRPC and the load generator; the echo
    under the same load stands in for that work, so this is the engine's ceiling on a box as busy
    as serving makes it.
    """
    load = threading.Thread(target=run_perf_analyzer, args=(echo_url, "mlp", concurrency),
                            kwargs={"window_ms": 8000, "mode": mode, "max_trials": 1})
    load.start()
    try:
        time.sleep(3)  # past perf_analyzer's start and warm-up
        (result,) = _ceiling(model_file, [batch], 4, threads)
    finally:
        load.join()
    return result


def _row(name: str, r: PerfResult, best: float) -> str:
    ratio = f"{r.infer_per_sec / best:5.2f}" if best else "  -  "
    batch = f"{r.mean_batch:5.1f}" if r.mean_batch else "    -"
    errors = len(r.errors)
    return (f"  {name:<14} {r.infer_per_sec:9.0f} {r.p50_us / 1000:8.2f} {r.p99_us / 1000:8.2f} "
            f"{ratio} {batch} {errors:6d}")


def _as_dict(r: PerfResult) -> dict[str, Any]:
    return {"concurrency": r.concurrency, "infer_per_sec": r.infer_per_sec, "p50_ms": r.p50_us / 1000,
            "p90_ms": r.p90_us / 1000, "p99_ms": r.p99_us / 1000, "mean_batch": r.mean_batch,
            "errors": r.errors[:5]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"model": "mlp " + "->".join(map(str, args.sizes)), "levels": []}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        repo_args = (args.delay_us, args.instances, args.threads, args.max_queue, args.sizes, args.preferred,
                     not args.no_adaptive)
        repo = build_repository(Path(tmp), *repo_args)
        servers: list[ServerProcess] = []
        try:
            tg = start_tensorgate(repo, extra=args.server_arg)
            servers.append(tg)
            echo_aio = start_echo("aio", tg.url, "mlp")
            servers.append(echo_aio)
            echo_thread = start_echo("thread", tg.url, "mlp")
            servers.append(echo_thread)
            measured = [("echo grpc.aio", echo_aio), ("echo thread", echo_thread), ("tensorgate", tg)]
            if not args.no_overhead:
                tg_no_op = start_tensorgate(build_repository(Path(tmp) / "no-op", *repo_args, no_op=True),
                                            extra=args.server_arg)
                servers.append(tg_no_op)
                measured.append(("tg no-op model", tg_no_op))
            report["server_rss_idle_mb"] = tg.rss_mb()
            print(f"tensorgate pid {tg.pid} idle RSS {report['server_rss_idle_mb']:.0f} MB; "
                  f"window {args.window_ms} ms, mode {args.mode}", flush=True)
            print("  server            infer/s  p50 ms   p99 ms  ratio batch errors  cpu us/req")
            for concurrency in args.concurrency:
                print(f"concurrency {concurrency}", flush=True)
                results = {}
                cpu_per_request: dict[str, float] = {}
                for name, server in measured:
                    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
                    results[name] = r = run_perf_analyzer(server.url, "mlp", concurrency, window_ms=args.window_ms,
                                                          mode=args.mode)
                    # load is steady over the run, so CPU per request = cores used / throughput
                    cores = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
                    cpu_per_request[name] = cores / r.infer_per_sec if r.infer_per_sec else 0.0
                best = max(results["echo grpc.aio"].infer_per_sec, results["echo thread"].infer_per_sec)
                for name, r in results.items():
                    print(_row(name, r, best) + f" {cpu_per_request[name] * 1e6:8.0f}", flush=True)
                report["levels"].append({"concurrency": concurrency,
                                         "results": {k: _as_dict(v) for k, v in results.items()},
                                         "tensorgate_vs_best_echo": results["tensorgate"].infer_per_sec / best
                                         if best else None,
                                         "server_cpu_us_per_request": {k: v * 1e6 for k, v in cpu_per_request.items()},
                                         "server_rss_mb": tg.rss_mb()})
            mean_batch = max(1, round(report["levels"][-1]["results"]["tensorgate"]["mean_batch"] or 1))
            ceilings = _ceiling(repo / "mlp" / "1" / "model.onnx", sorted({1, mean_batch}), 5, args.threads)
            best_server = report["levels"][-1]["results"]["tensorgate"]["infer_per_sec"]
            report["in_process_ceiling"] = ceilings
            for c in ceilings:
                ratio = best_server / c["infer_per_sec"] if c["infer_per_sec"] else 0.0
                c["tensorgate_ratio"] = ratio
                print(f"in-process ONNX Runtime at batch {c['batch']}: {c['infer_per_sec']:.0f} infer/s "
                      f"({c['ms_per_run']:.3f} ms per run); tensorgate at concurrency "
                      f"{args.concurrency[-1]} = {ratio:.2f} of it", flush=True)
            beside = _ceiling_beside_load(repo / "mlp" / "1" / "model.onnx", mean_batch, args.threads, echo_aio.url,
                                          args.concurrency[-1], args.mode)
            beside["tensorgate_ratio"] = best_server / beside["infer_per_sec"] if beside["infer_per_sec"] else 0.0
            report["in_process_ceiling_beside_load"] = beside
            print(f"in-process ONNX Runtime at batch {mean_batch} while the echo serves concurrency "
                  f"{args.concurrency[-1]} beside it: {beside['infer_per_sec']:.0f} infer/s "
                  f"({beside['ms_per_run']:.3f} ms per run); tensorgate = {beside['tensorgate_ratio']:.2f} of it",
                  flush=True)
            if args.soak_s:
                report["soak"] = soak(tg, args.soak_s)
                print(f"soak: {json.dumps(report['soak'])}", flush=True)
        finally:
            for server in servers:
                server.stop()
        if args.flood:
            # the compute-bound model: a flood must be far beyond what the engine can drain
            flood_repo = build_repository(Path(tmp) / "flood", args.delay_us, args.instances, args.threads, 256,
                                          FLOOD_SIZES)
            tg = start_tensorgate(flood_repo, extra=args.server_arg)
            try:
                report["flood"] = flood(tg, concurrency=args.flood, seconds=20)
                print(f"flood: {json.dumps(report['flood'])}", flush=True)
            finally:
                tg.stop()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--window-ms", type=int, default=10_000)
    parser.add_argument("--mode", choices=("sync", "async", "streaming"), default="sync",
                        help="perf_analyzer's load mode")
    parser.add_argument("--delay-us", type=int, default=1000, help="max_queue_delay_microseconds")
    parser.add_argument("--sizes", default=MLP_SIZES, type=lambda s: tuple(int(x) for x in s.split(",")),
                        help="MLP layer widths (default 784,1024,1024,10; compute-bound: 784,4096,4096,10)")
    parser.add_argument("--preferred", type=int, default=0, help="preferred_batch_size (0: none)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="adaptive_queue_delay off: always wait out the full queue delay")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip tensorgate serving the no-op model (the server-overhead row)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per instance")
    parser.add_argument("--max-queue", type=int, default=0)
    parser.add_argument("--soak-s", type=int, default=0, help="also run a memory soak at concurrency 32")
    parser.add_argument("--flood", type=int, default=0, help="also flood with this many in-flight requests")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `tensorgate serve` flag")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    start = time.monotonic()
    report = run(args)
    report["seconds"] = time.monotonic() - start
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

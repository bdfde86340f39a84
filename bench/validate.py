"""Does bench agree with Triton's perf_analyzer 2.51? Both against one tensorgate server, interleaved.

    python -m tensorgate.bench.validate [--concurrency 1,8,32] [--window-ms 5000] [--rounds 2] [--json out.json]

Server: tensorgate on the throughput benchmark's repository (MLP 784->1024->1024->10, max_batch_size 64,
1 ms queue delay). At each concurrency, in each round, perf_analyzer (sync mode, its default) and
`python -m tensorgate.bench` each measure windows of the same length under the same stability rule (the last three
agree within 100 %, at most --max-windows; the last three merged), alternating which goes first. A round
where perf_analyzer never settles (it then reports nothing) is left out of the medians. Each tool's CPU is its process's CPU time over
its wall time (RUSAGE_CHILDREN, so start-up included); bench's own figure for its measurement windows is
printed beside. The table gives bench/perf_analyzer for throughput and p50 (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .perf_analyzer import run_perf_analyzer
from .servers import REPO_ROOT, ServerProcess, start_tensorgate
from .throughput import build_repository

__all__ = ["main"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _perf(server: ServerProcess, concurrency: int, window_ms: int, windows: int) -> dict[str, Any]:
    cpu, wall, server_cpu = _children_cpu(), time.monotonic(), server.cpu_seconds()
    r = run_perf_analyzer(server.url, "mlp", concurrency, window_ms=window_ms, stability_percentage=100,
                          max_trials=windows)
    wall = time.monotonic() - wall
    return {"infer_per_sec": r.infer_per_sec, "p50_ms": r.p50_us / 1e3, "p99_ms": r.p99_us / 1e3,
            "mean_batch": r.mean_batch, "client_cores": (_children_cpu() - cpu) / wall,
            "server_cores": (server.cpu_seconds() - server_cpu) / wall, "errors": r.errors[:3]}


def _bench(server: ServerProcess, concurrency: int, window_ms: int, windows: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "tensorgate.bench", "--url", server.url, "--model", "mlp", "--concurrency",
               str(concurrency), "--window-ms", str(window_ms), "--warmup-s", "2", "--stability-percentage", "100",
               "--max-windows", str(windows), "--quiet", "--json", str(out), *extra]
        cpu, wall, server_cpu = _children_cpu(), time.monotonic(), server.cpu_seconds()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        wall = time.monotonic() - wall
        if proc.returncode != 0 or not out.exists():
            return {"error": proc.stderr[-2000:]}
        level = json.loads(out.read_text())["results"][0]
    return {"infer_per_sec": level["throughput_infer_per_sec"], "p50_ms": level["p50_ms"], "p99_ms": level["p99_ms"],
            "mean_batch": (level.get("server") or {}).get("mean_batch", 0.0), "client_cores": (_children_cpu() - cpu)
            / wall, "client_cores_in_windows": level["client_cpu_cores"],
            "client_loop_cpu": max(level["client_loop_cpu_per_process"] or [0.0]),
            "server_cores": (server.cpu_seconds() - server_cpu) / wall, "errors": level["errors"]}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"window_ms": args.window_ms, "rounds": [], "summary": []}
    with tempfile.TemporaryDirectory(prefix="tg-validate-") as tmp:
        server = start_tensorgate(build_repository(Path(tmp), args.delay_us, 1, 1))
        try:
            for round_index in range(args.rounds):
                for concurrency in args.concurrency:
                    order = ["perf", "bench"] if (round_index + concurrency) % 2 == 0 else ["bench", "perf"]
                    row: dict[str, Any] = {"round": round_index, "concurrency": concurrency, "order": order}
                    for tool in order:
                        row[tool] = (_perf(server, concurrency, args.window_ms, args.max_windows) if tool == "perf"
                                     else _bench(server, concurrency, args.window_ms, args.max_windows, args.bench_arg))
                    p, b = row["perf"], row["bench"]
                    if "error" not in b and p["infer_per_sec"] > 0:  # perf_analyzer gives 0 when never stable
                        row["throughput_ratio"] = _ratio(b["infer_per_sec"], p["infer_per_sec"])
                        row["p50_ratio"] = _ratio(b["p50_ms"], p["p50_ms"])
                    print(json.dumps(row), flush=True)
                    report["rounds"].append(row)
        finally:
            server.stop()
    print(f"\nbench vs perf_analyzer 2.51, same tensorgate server, window {args.window_ms} ms, "
          f"median of {args.rounds} round(s)")
    print(f"{'conc':>5} {'perf inf/s':>10} {'bench inf/s':>11} {'ratio':>6} {'perf p50':>9} {'bench p50':>9} "
          f"{'ratio':>6} {'perf cpu':>8} {'bench cpu':>9} {'(windows)':>9} {'loop':>5}")
    for concurrency in args.concurrency:
        rows = [r for r in report["rounds"] if r["concurrency"] == concurrency and "throughput_ratio" in r]
        if not rows:
            continue

        def med(tool: str, key: str, rows: list[dict[str, Any]] = rows) -> float:
            return float(statistics.median(r[tool][key] for r in rows))

        summary = {"concurrency": concurrency, "perf_infer_per_sec": med("perf", "infer_per_sec"),
                   "bench_infer_per_sec": med("bench", "infer_per_sec"),
                   "throughput_ratio": statistics.median(r["throughput_ratio"] for r in rows),
                   "perf_p50_ms": med("perf", "p50_ms"), "bench_p50_ms": med("bench", "p50_ms"),
                   "p50_ratio": statistics.median(r["p50_ratio"] for r in rows),
                   "perf_client_cores": med("perf", "client_cores"), "bench_client_cores": med("bench", "client_cores"),
                   "bench_client_cores_in_windows": med("bench", "client_cores_in_windows"),
                   "bench_client_loop_cpu": med("bench", "client_loop_cpu")}
        report["summary"].append(summary)
        s = summary
        print(f"{concurrency:>5} {s['perf_infer_per_sec']:>10.0f} {s['bench_infer_per_sec']:>11.0f} "
              f"{s['throughput_ratio']:>6.2f} {s['perf_p50_ms']:>9.2f} {s['bench_p50_ms']:>9.2f} {s['p50_ratio']:>6.2f} "
              f"{s['perf_client_cores']:>8.2f} {s['bench_client_cores']:>9.2f} "
              f"{s['bench_client_cores_in_windows']:>9.2f} {s['bench_client_loop_cpu']:>5.2f}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--window-ms", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-windows", type=int, default=6,
                        help="both tools: stop when the last 3 windows agree within 100 %%, after this many at most")
    parser.add_argument("--delay-us", type=int, default=1000, help="the model's max_queue_delay_microseconds")
    parser.add_argument("--bench-arg", action="append", default=[], help="extra `python -m tensorgate.bench` flag")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""What tracing costs: throughput at concurrency 32 with tracing off, at rate 1, and without tracing code.

    python -m tensorgate.bench.trace_overhead [--window-ms 4000] [--repeats 5] [--delay-us 1000] [--json out.json]

Servers run side by side on the MLP repository of bench.throughput
(784->1024->1024->10, max_batch_size 64, dynamic batching, one ORT instance):

* ``baseline``: the last commit before the tracing code, checked out with
  ``git worktree add`` (default HEAD: run this before committing the tracing
  change, or pass ``--baseline-ref``) and run from there;
* ``nohooks``: a copy of this working tree with the request-path tracing hooks
  deleted (the lines guarded by ``_tracer.active``, ``.trace is not None`` and
  ``_tracing.ANY_ACTIVE``): the same code as ``off`` in every other respect, so
  it isolates the hooks when the working tree holds other uncommitted changes;
* ``off``: this working tree, tracing code present, level OFF (the default);
* ``rate1``: this working tree, every request traced into an OTLP-JSON file
  (``--trace-config level=TIMESTAMPS rate=1 opentelemetry,file=...``).

perf_analyzer drives each in turn, interleaved (the order alternates) and
repeated; the report gives the median infer/s and the median server CPU per
request of each, and the ratios (the box is shared and noisy, so only ratios
from one sitting mean anything), and for rate 1 how many requests' spans reached
the file (the batch span processor drops spans rather than block a request).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .perf_analyzer import run_perf_analyzer
from .servers import REPO_ROOT, ServerProcess, free_port, start_tensorgate
from .throughput import build_repository

__all__ = ["main"]

_READY = "serving inference.GRPCInferenceService"
# a hook is its guard line and the one statement under it
_HOOK = re.compile(r"^(\s*)if (self\._tracer\.active|\w+\.trace is not None|_tracing\.ANY_ACTIVE):.*\n\1    .*\n",
                   re.MULTILINE)


def _baseline_worktree(path: Path, ref: str) -> Path:
    """A clean checkout of ``ref`` at ``path`` (reused when it is already there at that commit)."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    if (path / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()
        if head == commit:
            return path
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    return path


def _without_hooks(path: Path) -> tuple[Path, int]:
    """A copy of this tree's packages with the tracing hooks deleted; returns it and how many went."""
    if path.exists():
        shutil.rmtree(path)
    for package in ("server", "clients", "engines"):
        shutil.copytree(REPO_ROOT / package, path / package, ignore=shutil.ignore_patterns("__pycache__"))
    removed = 0
    for name in ("servicer.py", "servicer_sync.py", "scheduler.py", "async_scheduler.py"):
        source = path / "server" / name
        if source.exists():
            text, count = _HOOK.subn("", source.read_text())
            source.write_text(text)
            removed += count
    return path, removed


def _start_from(tree: Path, repo: Path, extra: list[str]) -> ServerProcess:
    """A server importing its `server` package from ``tree`` (PYTHONPATH, and -P: not from the cwd)."""
    port = free_port()
    cmd = ["env", f"PYTHONPATH={tree}", sys.executable, "-P", "-m", "tensorgate.server", "serve",
           "--model-repository", str(repo), "--grpc-port", str(port), *extra]
    return ServerProcess(cmd, port, _READY)


def _imported_from(tree: Path | None) -> str:
    """Where `python -m tensorgate.server` imports the package from, started the way the server is (checked, not assumed)."""
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else dict(os.environ)
    cmd = [sys.executable, *(["-P"] if tree else []), "-c", "import server; print(server.__file__)"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()


def _successes(url: str) -> int:
    with grpc.insecure_channel(url) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name="mlp"))
        return int(stats.model_stats[0].inference_stats.success.count)


def _count_traced(path: Path) -> int:
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            count += line.count('"name":"InferRequest"')
    return count


def _measure(name: str, server: ServerProcess, args: argparse.Namespace, trace_file: Path) -> dict[str, Any]:
    if name == "rate1":
        trace_file.write_bytes(b"")
    before, cpu = _successes(server.url), server.cpu_seconds()
    # stability is judged from the medians of interleaved repeats, not perf_analyzer's window-to-window
    # rule, which rarely settles on a shared 2-core box
    r = run_perf_analyzer(server.url, "mlp", args.concurrency, window_ms=args.window_ms,
                          stability_percentage=1000, max_trials=3)
    requests = _successes(server.url) - before
    out: dict[str, Any] = {"infer_per_sec": r.infer_per_sec, "p50_ms": r.p50_us / 1000,
                           "cpu_us_per_request": (server.cpu_seconds() - cpu) / max(1, requests) * 1e6,
                           "mean_batch": r.mean_batch, "errors": r.errors[:2]}
    if name == "rate1":
        out["traced_share"] = _count_traced(trace_file) / max(1, requests)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = ["baseline", *([] if args.no_strip else ["nohooks"]), "off", "rate1"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="tg-trace-bench-") as tmp:
        repo = build_repository(Path(tmp), args.delay_us, 1, 1)
        trace_file = Path(tmp) / "traces.jsonl"
        trees: dict[str, Path | None] = {"baseline": _baseline_worktree(Path(args.baseline_dir), args.baseline_ref),
                                         "off": None, "rate1": None}
        if not args.no_strip:
            trees["nohooks"], removed = _without_hooks(Path(tmp) / "nohooks")
            print(f"nohooks: {removed} hook(s) deleted from a copy of this tree", flush=True)
        servers: dict[str, ServerProcess] = {}
        rate1 = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
                 "--trace-config", f"opentelemetry,file={trace_file}", *args.rate1_arg]
        try:
            for name in names:
                tree = trees[name]
                extra = [] if name == "baseline" else ["--allow-metrics", "false"]
                extra += rate1 if name == "rate1" else []
                servers[name] = _start_from(tree, repo, extra) if tree else start_tensorgate(repo, extra)
                print(f"{name:<9} port {servers[name].port}  server package: {_imported_from(tree)}", flush=True)
            for rep in range(args.repeats):
                for name in names if rep % 2 == 0 else reversed(names):
                    m = _measure(name, servers[name], args, trace_file)
                    runs[name].append(m)
                    line = (f"  rep {rep + 1} {name:<9} {m['infer_per_sec']:7.0f} infer/s  p50 {m['p50_ms']:6.2f} ms"
                            f"  server CPU {m['cpu_us_per_request']:5.0f} us/request  batch {m['mean_batch']:4.1f}")
                    if "traced_share" in m:
                        line += f"  traced {m['traced_share']:.2f} of requests"
                    print(line + (f"  {m['errors']}" if m["errors"] else ""), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    tput = {n: statistics.median(m["infer_per_sec"] for m in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(m["cpu_us_per_request"] for m in rs) for n, rs in runs.items()}
    ratios = {f"{a}/{b}": tput[a] / tput[b] for a, b in (("off", "baseline"), ("rate1", "baseline"),
                                                          ("off", "nohooks"), ("rate1", "nohooks"), ("rate1", "off"))
              if tput.get(a) and tput.get(b)}
    print(f"\nmedians at concurrency {args.concurrency} over {args.repeats} interleaved runs:")
    for name in names:
        print(f"  {name:<9} {tput[name]:7.0f} infer/s   server CPU {cpu[name]:5.0f} us/request")
    for key, ratio in ratios.items():
        print(f"  throughput {key:<15} {ratio:.3f}")
    return {"concurrency": args.concurrency, "window_ms": args.window_ms, "repeats": args.repeats,
            "baseline_ref": args.baseline_ref, "median_infer_per_sec": tput, "median_cpu_us_per_request": cpu,
            "throughput_ratios": ratios, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--delay-us", type=int, default=1000, help="the model's max_queue_delay_microseconds")
    p.add_argument("--baseline-ref", default="HEAD", help="the commit without tracing code (default HEAD)")
    p.add_argument("--baseline-dir", default=os.path.join(tempfile.gettempdir(), "tg-baseline"))
    p.add_argument("--no-strip", action="store_true", help="skip the hooks-deleted copy of this tree")
    p.add_argument("--rate1-arg", action="append", default=[], help="extra serve flag for the rate-1 server")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run Triton's perf_analyzer (2.51, from its own venv) and read its figures.

perf_analyzer lives in `.venv-perf-analyzer` (tests/interop/setup_interop.sh
makes it); it needs the venv's libcudart on LD_LIBRARY_PATH even without a
GPU. Its CSV (-f) gives the client latencies; its stdout gives the server-side
counts (inference and execution count, so the mean executed batch size).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PerfResult", "find_perf_analyzer", "run_perf_analyzer"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PerfResult:
    concurrency: int
    infer_per_sec: float = 0.0
    p50_us: float = 0.0
    p90_us: float = 0.0
    p99_us: float = 0.0
    avg_us: float = 0.0
    server_inference_count: int = 0
    server_execution_count: int = 0
    server_queue_us: float = 0.0
    server_compute_infer_us: float = 0.0
    errors: list[str] = field(default_factory=list)
    returncode: int = 0
    output: str = ""

    @property
    def mean_batch(self) -> float:
        if not self.server_execution_count:
            return 0.0
        return self.server_inference_count / self.server_execution_count


def find_perf_analyzer(explicit: Path | None = None) -> tuple[Path, dict[str, str]]:
    """The binary and the environment it needs (LD_LIBRARY_PATH with the venv's libcudart)."""
    binary = explicit or REPO_ROOT / ".venv-perf-analyzer" / "bin" / "perf_analyzer"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} not found; run: bash tests/interop/setup_interop.sh")
    venv = binary.parent.parent
    libs = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*map(str, libs), env.get("LD_LIBRARY_PATH", "")])
    return binary, env


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def run_perf_analyzer(
    url: str,
    model: str,
    concurrency: int,
    *,
    window_ms: int = 10_000,
    mode: str = "sync",
    batch_size: int = 1,
    stability_percentage: int = 100,
    max_trials: int = 3,
    timeout_s: float = 300,
    binary: Path | None = None,
    request_rate: int = 0,
    protocol: str = "grpc",
) -> PerfResult:
    """One perf_analyzer measurement at one concurrency or fixed request rate (mode: sync, async, streaming).

    ``protocol`` is perf_analyzer's ``-i``: grpc, or http (KServe v2 REST; `url` is then the HTTP endpoint).

    The stability rule is loose by default (100 %, 3 windows): on a shared 2-core box
    perf_analyzer's 10 % rule often never settles, and benchmarks here compare ratios
    measured side by side rather than absolute figures.
    """
    exe, env = find_perf_analyzer(binary)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "out.csv"
        cmd = [
            str(exe), "-m", model, "-u", url, "-i", protocol, "-b", str(batch_size),
            *(["--request-rate-range", f"{request_rate}:{request_rate}"] if request_rate
              else ["--concurrency-range", f"{concurrency}:{concurrency}"]),
            "--measurement-interval", str(window_ms),
            "--stability-percentage", str(stability_percentage),
            "--max-trials", str(max_trials),
            "--percentile", "99",
            "-f", str(csv_path),
        ]
        if mode == "async":
            cmd.append("--async")
        elif mode == "streaming":
            cmd.append("--streaming")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        result = PerfResult(concurrency=concurrency, returncode=proc.returncode, output=proc.stdout + proc.stderr)
        if csv_path.exists():
            rows = list(csv.DictReader(csv_path.open()))
            if rows:
                row = rows[-1]
                result.infer_per_sec = float(row.get("Inferences/Second", 0) or 0)
                result.p50_us = float(row.get("p50 latency", 0) or 0)
                result.p90_us = float(row.get("p90 latency", 0) or 0)
                result.p99_us = float(row.get("p99 latency", 0) or 0)
                result.avg_us = float(row.get("Avg latency", 0) or 0)
    text = result.output
    result.server_inference_count = int(_number(r"Inference count: (\d+)", text))
    result.server_execution_count = int(_number(r"Execution count: (\d+)", text))
    result.server_queue_us = _number(r"queue (\d+) usec", text)
    result.server_compute_infer_us = _number(r"compute infer (\d+) usec", text)
    result.errors = [line.strip() for line in text.splitlines() if re.search(r"error|failed", line, re.I)]
    if proc.returncode != 0 and not result.errors:
        result.errors.append(f"perf_analyzer exited {proc.returncode}")
    return result

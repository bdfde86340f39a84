"""Triton's perf_analyzer (2.51, from .venv-perf-analyzer) load-tests the batching `simple` model.

perf_analyzer calls ServerMetadata, ModelMetadata and ModelConfig before it starts (it fails with "failed to
get model config" without the last two), and ModelStatistics around every measurement window because the
server advertises the `statistics` extension; so a clean run also checks those RPCs. Sync and async modes use
ModelInfer, --streaming uses ModelStreamInfer.

Each run measures 5 s windows at concurrency 4 until throughput is stable. The default stability threshold
(10 % over 3 windows) is too tight for a 2-core CI machine that runs both the Python server and the client
(streaming then fails with "Failed to obtain stable measurement" and exit 2, which is no protocol error), so
the runs use --stability-percentage 50; each then takes about 3 windows (~20 s).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from interop_support import InteropEnv, InteropServer, client_env

pytestmark = pytest.mark.interop

MEASUREMENT_MS = 5000
CONCURRENCY = 4
RUN_TIMEOUT_S = 120
MODES = {
    "sync": [],  # perf_analyzer's default: synchronous ModelInfer, one thread per concurrent request
    "async": ["--async"],
    "streaming": ["--streaming"],  # ModelStreamInfer
    "http": ["-i", "http"],  # KServe v2 REST: binary tensor data, v2/models/simple/{config,stats} as JSON
}
_ERROR = re.compile(r"error|failed|unable|cannot|exception", re.IGNORECASE)


def _number(output: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}:\s*([0-9.]+)", output, re.MULTILINE)
    assert match, f"no '{label}:' line in the perf_analyzer output"
    return float(match.group(1))


def _line(output: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}:.*$", output, re.MULTILINE)
    return match.group(0).strip() if match else f"{label}: <missing>"


@pytest.mark.parametrize("mode", list(MODES))
def test_perf_analyzer(mode: str, interop_env: InteropEnv, interop_server: InteropServer) -> None:
    cmd = [
        str(interop_env.perf_analyzer),
        "-m", "simple",
        "-u", interop_server.http_url if mode == "http" else interop_server.url,
        "-i", "grpc",  # the http mode's own "-i http" comes later and wins
        "--concurrency-range", f"{CONCURRENCY}:{CONCURRENCY}",
        "--measurement-interval", str(MEASUREMENT_MS),
        "--stability-percentage", "50",
        *MODES[mode],
    ]
    env = client_env(LD_LIBRARY_PATH=interop_env.perf_analyzer_ld_library_path)
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"perf_analyzer ({mode}) ran over {RUN_TIMEOUT_S} s:\n{partial}")
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    print(f"\n$ {' '.join(cmd)}\n[{mode}: exit {done.returncode} after {seconds:.1f} s]\n{output}")

    assert done.returncode == 0, f"perf_analyzer ({mode}) exited {done.returncode}:\n{output}"
    errors = [line for line in output.splitlines() if _ERROR.search(line)]
    assert not errors, f"perf_analyzer ({mode}) reported errors: {errors}\n{output}"

    throughput = _number(output, "Throughput")
    client_requests = _number(output, "Request count")
    assert throughput > 0 and client_requests > 0, output
    # server-side statistics (ModelStatistics diffed around the windows): only there when the server advertises
    # `statistics` and answers ModelStatistics in the form perf_analyzer parses
    assert re.search(r"^\s*Server:\s*$", output, re.MULTILINE), f"no server-side breakdown:\n{output}"
    server_requests = _number(output, "Successful request count")
    inferences = _number(output, "Inference count")
    executions = _number(output, "Execution count")
    assert inferences == server_requests, f"batch size 1: inference count must equal request count\n{output}"
    assert 1 <= executions <= inferences, output
    assert abs(server_requests - client_requests) <= max(16, 0.02 * client_requests), (
        f"server counted {server_requests} requests, the client {client_requests}\n{output}"
    )
    assert _line(output, "Avg request latency").count("usec") >= 5, output
    assert interop_server.alive(), "the server process died under perf_analyzer"

    print(
        f"[perf_analyzer {mode} summary] "
        + " | ".join(_line(output, label) for label in (
            "Throughput", "Avg latency", "p99 latency", "Avg gRPC time", "Avg HTTP time", "Inference count", "Execution count",
            "Avg request latency"))
    )

"""The two ceilings a server is measured against, in the same run: ONNX Runtime in-process and bare echoes.

(a) `bench.ceiling` (a subprocess: bench itself never imports engines) runs the model file in a tight
loop at batch 1 and at the mean batch the server formed. (b) `bench.servers.start_echo` starts bare
grpc.aio and thread-pool echo servers on loopback that copy the target's model metadata and answer with
responses of the model's size; the runner drives them with the same load as the server, level by level.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .servers import REPO_ROOT, ServerProcess, start_echo

__all__ = ["ECHO_FLAVOURS", "ort_ceiling", "start_echoes"]

#: report key -> bench.echo flavour
ECHO_FLAVOURS = {"echo_aio": "aio", "echo_thread": "thread"}


def start_echoes(like_url: str, model: str) -> dict[str, ServerProcess]:
    """Both echo flavours on free loopback ports, imitating `model` on `like_url`."""
    started: dict[str, ServerProcess] = {}
    try:
        for key, flavour in ECHO_FLAVOURS.items():
            started[key] = start_echo(flavour, like_url, model)
    except Exception:
        for server in started.values():
            server.stop()
        raise
    return started


def ort_ceiling(model_file: Path, batches: Iterable[int], seconds: float, threads: int) -> dict[int, float]:
    """Inferences per second of ONNX Runtime alone at each batch size.

    Raises:
        RuntimeError: bench.ceiling failed (no onnxruntime, a bad model file, ...), with its stderr.
    """
    batch_list = sorted({max(1, int(b)) for b in batches})
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgate.bench.ceiling", "--model-file", str(model_file), "--batch",
         ",".join(map(str, batch_list)), "--seconds", str(seconds), "--threads", str(threads)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60 + 2 * seconds * len(batch_list),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.ceiling failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    out: dict[int, float] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[int(row["batch"])] = float(row["infer_per_sec"])
    return out

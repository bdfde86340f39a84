"""Interop fixtures: NVIDIA's own clients (tritonclient, perf_analyzer) against `tensorgate serve`.

The clients live in their own venvs at the repository root, made by setup_interop.sh (idempotent; it runs
here once per session, so a plain ``pytest`` works on a fresh clone):

* ``.venv-tritonclient``: the latest ``tritonclient[grpc,http]``. Its ``inference.*`` protobuf symbols clash with
  tensorgate's, so it only ever runs in a subprocess (tritonclient_checks.py).
* ``.venv-perf-analyzer``: ``tritonclient[grpc]==2.51.0`` (the last perf_analyzer binary that runs on glibc
  2.36) and ``nvidia-cuda-runtime-cu12`` for ``libcudart.so.12``.

The server runs in its own process too (``serve_subprocess``), on a repository built here:
``simple`` (INT32 add/sub, max_batch_size 8, dynamic batching), ``nobatch`` (FP32 add/sub, max_batch_size 0),
``mlp`` (FP32 784->64->10 classifier, max_batch_size 16, dynamic batching) and ``broken`` (not ONNX).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from interop_support import (
    PERF_ANALYZER_VENV,
    SETUP_SCRIPT,
    TRITONCLIENT_VENV,
    InteropEnv,
    InteropServer,
    client_env,
)

from support import REPO_ROOT, free_port, serve_subprocess, write_model

SIMPLE_CONFIG = """
name: "simple"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
NOBATCH_CONFIG = 'name: "nobatch"\nmax_batch_size: 0\n'
MLP_CONFIG = 'name: "mlp"\nmax_batch_size: 16\ndynamic_batching { }\n'


@pytest.fixture(scope="session")
def interop_env() -> InteropEnv:
    start = time.monotonic()
    try:
        done = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=1200, env=client_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"setup_interop.sh timed out after {exc.timeout} s:\n{exc.stdout or ''}{exc.stderr or ''}")
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"setup_interop.sh failed (exit {done.returncode}):\n{output}")
    print(f"\n[setup_interop.sh took {seconds:.1f} s]\n" + done.stdout.strip())
    cudart = sorted(PERF_ANALYZER_VENV.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
    assert cudart, f"libcudart.so.12 not found in {PERF_ANALYZER_VENV}\n{output}"
    return InteropEnv(
        tritonclient_python=TRITONCLIENT_VENV / "bin" / "python",
        perf_analyzer=PERF_ANALYZER_VENV / "bin" / "perf_analyzer",
        perf_analyzer_ld_library_path=str(cudart[-1].parent),
        setup_output=output,
        setup_seconds=seconds,
    )


@pytest.fixture(scope="session")
def interop_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("interop-repository")
    write_model(repo, "simple", SIMPLE_CONFIG)
    write_model(repo, "nobatch", NOBATCH_CONFIG, dtype=np.float32)
    write_model(repo, "mlp", MLP_CONFIG, builder="mlp", sizes=(784, 64, 10))
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    return repo


@pytest.fixture(scope="session")
def interop_server(interop_env: InteropEnv, interop_repository: Path) -> Iterator[InteropServer]:
    # client shared memory on (test_shared_memory drives the extension with tritonclient and perf_analyzer);
    # explicit mode with every model loaded at start: the same models serve, and load_model (the
    # model_repository extension's probe) reloads one, as Triton does
    http_port = free_port()
    with serve_subprocess(interop_repository, "--http-port", str(http_port), "--allow-client-shm", "true",
                          "--model-control-mode", "explicit", "--load-model", "*") as (proc, port):
        yield InteropServer(proc, port, http_port)

"""tritonclient (its own venv and process) drives model control: load/unload/index, overrides, traversal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from interop_support import INTEROP_DIR, InteropEnv, client_env

from support import serve_subprocess, write_model

pytestmark = pytest.mark.interop

CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def test_tritonclient_model_control(interop_env: InteropEnv, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "simple", CONFIG)
    write_model(repo, "spare", CONFIG)
    with serve_subprocess(repo, "--model-control-mode", "explicit", "--load-model", "simple") as (proc, port):
        done = subprocess.run(
            [str(interop_env.tritonclient_python), str(INTEROP_DIR / "tritonclient_lifecycle_checks.py"),
             f"127.0.0.1:{port}", str(repo / "simple" / "1" / "model.onnx")],
            capture_output=True, text=True, timeout=300, env=client_env(),
        )
        assert proc.poll() is None, "the server died during the checks"
    summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    assert summary, done.stdout + done.stderr
    assert done.returncode == 0 and summary["failed"] == [], json.dumps(summary, indent=2)
    assert not (repo / "uploaded").exists() and not (repo.parent / "x").exists()

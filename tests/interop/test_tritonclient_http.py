"""The latest tritonclient.http (sync and aio) exercises every REST route against `tensorgate serve`.

The checks live in tritonclient_http_checks.py, run with .venv-tritonclient's python in its own process
(tritonclient's ``inference.*`` protobuf symbols clash with tensorgate's inside one interpreter).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from interop_support import INTEROP_DIR, InteropEnv, InteropServer, client_env

pytestmark = pytest.mark.interop

CHECKS_SCRIPT = INTEROP_DIR / "tritonclient_http_checks.py"


def test_tritonclient_http_exercises_every_route(interop_env: InteropEnv, interop_server: InteropServer) -> None:
    try:
        done = subprocess.run([str(interop_env.tritonclient_python), str(CHECKS_SCRIPT), interop_server.http_url],
                              capture_output=True, text=True, timeout=300, env=client_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tritonclient_http_checks.py timed out after {exc.timeout} s:\n{exc.stdout or ''}")
    output = done.stdout + (f"\n--- stderr ---\n{done.stderr}" if done.stderr.strip() else "")
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"tritonclient_http_checks.py printed no JSON summary (exit {done.returncode}):\n{output}")
    lines = [f"tritonclient {summary['tritonclient']} (http): {summary['passed']}/{summary['checks']} checks passed"]
    lines += [f"  {'ok  ' if r['ok'] else 'FAIL'} {r['name']}" + ("" if r["ok"] else f": {r['error']}")
              for r in summary["results"]]
    print("\n" + "\n".join(lines))
    assert done.returncode == 0 and not summary["failed"], f"tritonclient.http checks failed:\n{output}"
    assert summary["checks"] >= 16, "a check went missing"
    assert interop_server.alive(), "the server process died during the tritonclient.http checks"

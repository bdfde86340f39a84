"""The latest tritonclient[grpc] (sync and asyncio) exercises every implemented RPC against `tensorgate serve`.

The checks themselves live in tritonclient_checks.py, which runs with .venv-tritonclient's python in its own
process: tritonclient's ``inference.*`` protobuf symbols clash with tensorgate's inside one interpreter.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from interop_support import INTEROP_DIR, InteropEnv, InteropServer, client_env

pytestmark = pytest.mark.interop

CHECKS_SCRIPT = INTEROP_DIR / "tritonclient_checks.py"


@pytest.fixture(scope="module")
def tritonclient_run(interop_env: InteropEnv, interop_server: InteropServer) -> tuple[int, str, dict[str, Any]]:
    """Run the checks once: (exit status, output, parsed JSON summary or {})."""
    try:
        done = subprocess.run([str(interop_env.tritonclient_python), str(CHECKS_SCRIPT), interop_server.url],
                              capture_output=True, text=True, timeout=300, env=client_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tritonclient_checks.py timed out after {exc.timeout} s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
    output = done.stdout + (f"\n--- stderr ---\n{done.stderr}" if done.stderr.strip() else "")
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        summary = {}
    return done.returncode, output, summary


def _brief(summary: dict[str, Any]) -> str:
    lines = [f"tritonclient {summary.get('tritonclient')}: {summary.get('passed')}/{summary.get('checks')} checks "
             f"passed in {summary.get('seconds')} s"]
    for result in summary.get("results", []):
        mark = "ok  " if result["ok"] else ("DIVG" if "divergence" in result else "FAIL")
        lines.append(f"  {mark} {result['name']}" + (f": {result['error']}" if not result["ok"] else ""))
    return "\n".join(lines)


def test_tritonclient_exercises_every_implemented_rpc(
    tritonclient_run: tuple[int, str, dict[str, Any]], interop_server: InteropServer
) -> None:
    returncode, output, summary = tritonclient_run
    print("\n" + (_brief(summary) if summary else output))
    assert summary, f"tritonclient_checks.py printed no JSON summary (exit {returncode}):\n{output}"
    assert returncode == 0 and not summary["failed"], (
        f"tritonclient checks failed: {summary['failed']}\n{output}"
    )
    assert interop_server.alive(), "the server process died during the tritonclient checks"


def test_tritonclient_error_codes_match_triton(tritonclient_run: tuple[int, str, dict[str, Any]]) -> None:
    """Where tensorgate's status codes are known to differ from Triton's (xfail until the server matches)."""
    _, output, summary = tritonclient_run
    assert summary, output
    divergences = summary["divergences"]
    if divergences:
        details = "; ".join(f"{d['name']}: {d['reason']} -- tensorgate: {d['got']}" for d in divergences)
        print("\nDivergences from Triton:\n  " + "\n  ".join(
            f"{d['name']}: {d['got']}\n    expected: {d['reason']}" for d in divergences))
        pytest.xfail(f"{len(divergences)} known divergence(s) from Triton: {details}")

"""NVIDIA's tritonclient (sync, streaming, asyncio) against `tensorgate serve` with mutual TLS, a restricted
group and a bearer token; the checks run in .venv-tritonclient (tritonclient_tls_checks.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cert_support import make_pki
from interop_support import INTEROP_DIR, InteropEnv, client_env

from support import serve_subprocess

pytestmark = pytest.mark.interop

CHECKS_SCRIPT = INTEROP_DIR / "tritonclient_tls_checks.py"


def test_tritonclient_over_mutual_tls_with_restrictions_and_a_token(
    interop_env: InteropEnv, interop_repository: Path, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", "interop")
    other = make_pki(tmp_path / "other", "other")
    tokens = tmp_path / "tokens"
    tokens.write_text("interop-token\n")
    flags = (
        "--grpc-use-ssl-mutual", "--grpc-server-cert", str(pki.server.cert), "--grpc-server-key",
        str(pki.server.key), "--grpc-root-cert", str(pki.ca), "--grpc-restricted-protocol", "logging:admin=open-sesame",
        "--grpc-auth-token-file", str(tokens), "--allow-metrics", "false",
    )
    with serve_subprocess(interop_repository, *flags) as (proc, port):
        args = [f"127.0.0.1:{port}", pki.ca, pki.client.cert, pki.client.key, other.client.cert, other.client.key]
        done = subprocess.run([str(interop_env.tritonclient_python), str(CHECKS_SCRIPT), *map(str, args)],
                              capture_output=True, text=True, timeout=300, env=client_env())
        output = done.stdout + done.stderr
        try:
            summary = json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON summary (exit {done.returncode}):\n{output}")
        print("\n" + "\n".join(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['name']}" for r in summary["results"]))
        assert done.returncode == 0 and not summary["failed"], output
        assert proc.poll() is None, "the server died during the checks"

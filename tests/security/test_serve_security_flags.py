"""`tensorgate serve` with Triton's TLS flags: SIGHUP reloads, unusable settings stop the start with a reason."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cert_support import Pki, install, peer_serial

from support import REPO_ROOT, serve_subprocess
from tensorgate.clients import InferenceClient, InferenceServerError
from tensorgate.server.cli import build_parser
from tensorgate.server.security import security_settings_from_args

pytestmark = pytest.mark.slow


def test_flags_parse_like_tritons(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "serve", "--grpc-use-ssl=true", "--grpc-use-ssl-mutual", "--grpc-server-cert", "c.pem",
        "--grpc-server-key", "k.pem", "--grpc-root-cert", "ca.pem",
        "--grpc-restricted-protocol", "logging,trace:admin=x", "--grpc-restricted-protocol", "model-repository:ops=y",
        "--grpc-auth-token-file", "tokens", "--grpc-auth-exempt", "health,metadata",
    ])
    settings = security_settings_from_args(args)
    assert settings.tls.enabled and settings.tls.mutual and settings.tls.root_cert == Path("ca.pem")
    assert [sorted(r.groups) for r in settings.restrictions] == [["logging", "trace"], ["model-repository"]]
    assert settings.auth_exempt_groups == ("health", "metadata")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--grpc-restricted-protocol", "nosuch:k=v"])


def test_the_environment_gives_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_GRPC_USE_SSL", "true")
    monkeypatch.setenv("TENSORGATE_GRPC_SERVER_CERT", "c.pem")
    monkeypatch.setenv("TENSORGATE_GRPC_SERVER_KEY", "k.pem")
    monkeypatch.setenv("TENSORGATE_GRPC_RESTRICTED_PROTOCOL", "logging:admin=x trace:ops=y")
    settings = security_settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.tls.use_ssl and settings.tls.server_cert == Path("c.pem")
    assert [r.key for r in settings.restrictions] == ["admin", "ops"]
    monkeypatch.setenv("TENSORGATE_GRPC_RESTRICTED_PROTOCOL", "nosuch:k=v")
    with pytest.raises(SystemExit, match="TENSORGATE_GRPC_RESTRICTED_PROTOCOL: restricted protocol 'nosuch:k=v'"):
        build_parser()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", "0", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_unusable_settings_stop_the_start_with_a_reason(alpha: Pki, beta: Pki, tmp_path: Path) -> None:
    repo = tmp_path / "empty-repository"
    repo.mkdir()
    done = run_serve("--model-repository", str(repo), "--grpc-use-ssl")
    assert done.returncode != 0 and "needs --grpc-server-cert and --grpc-server-key" in done.stderr
    done = run_serve("--model-repository", str(repo), "--grpc-use-ssl", "--grpc-server-cert", str(alpha.server.cert),
                     "--grpc-server-key", str(beta.server.key))
    assert done.returncode == 1 and "cannot use certificate" in done.stderr and "Traceback" not in done.stderr
    done = run_serve("--model-repository", str(repo), "--grpc-auth-token-file", str(tmp_path / "missing"))
    assert done.returncode == 1 and "cannot read the token file" in done.stderr


def served(port: int, pki: Pki) -> bool:
    try:
        return peer_serial("127.0.0.1", port, pki.ca) == pki.server.serial
    except ssl.SSLError:  # still the old certificate, which pki's CA does not trust
        return False


def test_sighup_reloads_the_certificate(alpha: Pki, beta: Pki, security_repository: Path, tmp_path: Path) -> None:
    cert, key, _ = install(alpha, tmp_path / "live")
    flags = ("--grpc-use-ssl", "--grpc-server-cert", str(cert), "--grpc-server-key", str(key),
             "--allow-metrics", "false")
    with serve_subprocess(security_repository, *flags) as (proc, port):
        url = f"127.0.0.1:{port}"
        old = InferenceClient(url, ssl=True, root_certificates=alpha.ca)
        try:
            assert old.is_server_live()
            with InferenceClient(url) as plain, pytest.raises(InferenceServerError):
                plain.is_server_live(client_timeout=20)
            install(beta, tmp_path / "live")
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while not served(port, beta):
                assert time.monotonic() < deadline, "the new certificate was never served"
                time.sleep(0.1)
            assert old.is_server_live()  # the connection made before the reload still serves
            assert proc.poll() is None
        finally:
            old.close()


def test_failed_handshakes_do_not_flood_the_output(alpha: Pki, tmp_path: Path) -> None:
    """gRPC's core would print a line per failed TLS handshake; the server keeps it at ERROR level."""
    repo = tmp_path / "empty-repository"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorgate.server", "serve", "--model-repository", str(repo), "--grpc-port", "0",
         "--allow-metrics", "false", "--grpc-use-ssl", "--grpc-server-cert", str(alpha.server.cert),
         "--grpc-server-key", str(alpha.server.key)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "serving inference.GRPCInferenceService" in line:
            break
    port = int(lines[-1].split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
    for _ in range(10):
        with InferenceClient(f"127.0.0.1:{port}") as plain, pytest.raises(InferenceServerError):
            plain.is_server_live(client_timeout=5)
    proc.terminate()
    output = "".join(lines) + proc.communicate(timeout=60)[0]
    assert "Handshake failed" not in output and "ssl_transport_security" not in output, output

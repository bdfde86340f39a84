"""The REST endpoint follows the gRPC flags: restricted groups in Triton's HTTP form, tokens, and TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from cert_support import Pki, install

from support import running_server
from tensorgate.server.security import SecuritySettings, TlsSettings
from tensorgate.server.security.access import parse_restriction

INFER = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                    for n in ("INPUT0", "INPUT1")]}


def test_restricted_groups_apply_to_http_with_the_bare_header(security_repository: Path) -> None:
    security = SecuritySettings(restrictions=(parse_restriction("inference,model-repository:admin-key=s3cret"),))
    with running_server(security_repository, security=security) as server:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            refused = http.post("/v2/models/simple/infer", json=INFER)
            assert refused.status_code == 403
            assert refused.json()["error"] == "This API is restricted, expecting header 'admin-key'"
            assert http.post("/v2/models/simple/infer", json=INFER,
                             headers={"admin-key": "wrong"}).status_code == 403
            assert http.post("/v2/models/simple/infer", json=INFER,
                             headers={"Admin-Key": "s3cret"}).status_code == 200
            assert http.get("/v2/health/ready").status_code == 200  # health is not restricted


def test_tokens_apply_to_http(security_repository: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken-1\n")
    tokens.chmod(0o600)
    with running_server(security_repository, security=SecuritySettings(auth_token_file=tokens)) as server:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            assert http.post("/v2/models/simple/infer", json=INFER).status_code == 403
            ok = http.post("/v2/models/simple/infer", json=INFER, headers={"Authorization": "Bearer t0ken-1"})
            assert ok.status_code == 200
            assert http.get("/v2/health/live").status_code == 200  # health is exempt by default


def test_http_serves_tls_with_the_grpc_certificates(alpha: Pki, security_repository: Path,
                                                    tmp_path: Path) -> None:
    cert, key, _ = install(alpha, tmp_path / "live")
    security = SecuritySettings(tls=TlsSettings(use_ssl=True, server_cert=cert, server_key=key))
    with running_server(security_repository, security=security) as server:
        url = server.http_url.replace("http://", "https://")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(alpha.ca)), timeout=30) as http:
            assert http.post("/v2/models/simple/infer", json=INFER).status_code == 200

"""The HTTP endpoint's seams: TLS from an ``ssl.SSLContext``, the access-control hook, the thread flavour,
W3C trace context from HTTP headers, and a clean stop with requests in flight.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import running_server
from tensorgate.server.http import GROUPS

SIMPLE_BODY = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                          for n in ("INPUT0", "INPUT1")]}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the cryptography package."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tensorgate test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_an_ssl_context(test_repository: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with running_server(test_repository, http_ssl=context) as handle:
        assert handle.http_url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=handle.http_url, verify=trusted) as client:
            assert client.get("/v2/health/ready").status_code == 200
            assert client.post("/v2/models/simple/infer", json=SIMPLE_BODY).json()["outputs"][0]["data"] == [2] * 16
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused by the client
            httpx.get(handle.http_url + "/v2/health/ready")
        plain_url = handle.http_url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(plain_url + "/v2/health/ready", timeout=5)


def test_the_authorize_hook_sees_every_group_and_refuses_with_403(test_repository: Path) -> None:
    seen: list[tuple[str, str]] = []

    def authorize(group: str, headers: Any) -> str | None:
        seen.append((group, headers.get("x-key", "")))
        if group in ("inference", "model-repository") and headers.get("x-key") != "secret":
            return "This API is restricted, expecting header 'x-key'"
        return None

    with running_server(test_repository, http_authorize=authorize) as handle:
        with httpx.Client(base_url=handle.http_url) as client:
            r = client.post("/v2/models/simple/infer", json=SIMPLE_BODY)
            assert r.status_code == 403 and r.json() == {"error": "This API is restricted, expecting header 'x-key'"}
            r = client.post("/v2/models/nosuch/infer", json=SIMPLE_BODY)
            assert r.status_code == 403, "the refusal comes before the model lookup"
            ok = client.post("/v2/models/simple/infer", json=SIMPLE_BODY, headers={"x-key": "secret"})
            assert ok.status_code == 200
            assert client.get("/v2/health/ready").status_code == 200
            for path in ("/v2", "/v2/models/simple/config", "/v2/models/simple/stats", "/v2/trace/setting",
                         "/v2/logging", "/v2/systemsharedmemory/status"):
                client.get(path)
            assert client.post("/v2/repository/index").status_code == 403
    assert {group for group, _ in seen} == set(GROUPS)


def test_http_serves_beside_the_thread_flavour(test_repository: Path) -> None:
    with running_server(test_repository, grpc_flavor="thread") as handle:
        with httpx.Client(base_url=handle.http_url) as client:
            for _ in range(3):
                assert client.post("/v2/models/simple/infer", json=SIMPLE_BODY).status_code == 200
            assert client.get("/v2/health/ready").status_code == 200


def test_an_http_traceparent_joins_the_callers_trace(test_repository: Path, tmp_path: Path) -> None:
    from tensorgate.server.telemetry import TelemetrySettings

    out = tmp_path / "t.jsonl"
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    telemetry = TelemetrySettings(metrics_port=0, trace_config=("level=TIMESTAMPS", "rate=0",
                                                                f"opentelemetry,file={out}"))
    with running_server(test_repository, telemetry=telemetry) as handle:
        with httpx.Client(base_url=handle.http_url) as client:
            headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
            assert client.post("/v2/models/simple/infer", json={**SIMPLE_BODY, "id": "t1"},
                               headers=headers).status_code == 200
            assert client.post("/v2/models/simple/infer", json=SIMPLE_BODY).status_code == 200  # rate 0: untraced
    spans = [span for line in out.read_text().splitlines() if line.strip()
             for resource in json.loads(line)["resourceSpans"] for scope in resource["scopeSpans"]
             for span in scope["spans"]]
    names = {s["name"] for s in spans if s.get("traceId") == trace_id}
    assert {"InferRequest", "simple", "compute"} <= names, spans
    root = next(s for s in spans if s["name"] == "InferRequest")
    assert root["parentSpanId"] == parent
    assert {s["traceId"] for s in spans if s["name"] == "InferRequest"} == {trace_id}

"""The metrics endpoint over HTTPS: served with the gRPC port's pair (or its own), reloaded with it."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cert_support import Pki, install

from support import RunningServer, running_server
from tensorgate.server.security import SecuritySettings, TlsError, TlsSettings
from tensorgate.server.telemetry import TelemetrySettings


def scrape(url: str, ca: Path | None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(url, context=ctx, timeout=20) as response:
        body: bytes = response.read()
    return body.decode()


def metrics_url(server: RunningServer) -> str:
    metrics = server.server.telemetry.metrics
    assert metrics is not None
    return metrics.url


def test_metrics_over_https_with_the_grpc_pair_and_reloaded(alpha: Pki, beta: Pki, security_repository: Path,
                                                            tmp_path: Path) -> None:
    cert, key, _ = install(alpha, tmp_path / "live")
    security = SecuritySettings(tls=TlsSettings(use_ssl=True, server_cert=cert, server_key=key),
                                metrics_use_ssl=True)
    with running_server(security_repository, security=security) as server:
        url = metrics_url(server)
        assert url.startswith("https://127.0.0.1:")
        assert "nv_inference_count" in scrape(url, alpha.ca)
        with pytest.raises(urllib.error.URLError):  # not trusted by another CA
            scrape(url, beta.ca)
        plain = url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext gets no metrics
            scrape(plain, None)
        install(beta, tmp_path / "live")
        assert server.server.reload_credentials()
        assert "nv_inference_count" in scrape(url, beta.ca)
        assert "nv_inference_count" in scrape(url, beta.ca)  # the endpoint keeps serving


def test_metrics_tls_without_a_pair_is_refused_at_start(security_repository: Path) -> None:
    with pytest.raises(TlsError, match="--metrics-use-ssl needs"):
        RunningServer(security_repository, security=SecuritySettings(metrics_use_ssl=True))


def test_metrics_with_its_own_pair_and_plain_grpc(alpha: Pki, security_repository: Path) -> None:
    security = SecuritySettings(metrics_use_ssl=True, metrics_server_cert=alpha.server.cert,
                                metrics_server_key=alpha.server.key)
    with running_server(security_repository, security=security,
                        telemetry=TelemetrySettings(metrics_port=0)) as server:
        assert "nv_inference_count" in scrape(metrics_url(server), alpha.ca)

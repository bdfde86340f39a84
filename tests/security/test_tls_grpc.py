"""TLS and mutual TLS on a real server (both flavours), our two clients, certificates reloaded in place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cert_support import Pki, install, peer_serial

from support import RunningServer
from tensorgate.clients import AsyncInferenceClient, InferenceClient, InferenceServerError, InferInput
from tensorgate.server.security import SecuritySettings, TlsSettings


def tls_settings(cert: Path, key: Path, ca: Path, mutual: bool) -> SecuritySettings:
    return SecuritySettings(tls=TlsSettings(use_ssl=True, server_cert=cert, server_key=key, root_cert=ca,
                                            mutual=mutual))


@pytest.fixture(params=["aio", "thread"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tls_server(flavor: str, alpha: Pki, security_repository: Path) -> Iterator[RunningServer]:
    security = tls_settings(alpha.server.cert, alpha.server.key, alpha.ca, mutual=False)
    handle = RunningServer(security_repository, grpc_flavor=flavor, security=security).start()
    yield handle
    handle.stop()


@pytest.fixture
def mtls_server(flavor: str, alpha: Pki, security_repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """Mutual TLS, started from copies of alpha's files (a test may replace them and reload)."""
    cert, key, ca = install(alpha, tmp_path / "live")
    handle = RunningServer(security_repository, grpc_flavor=flavor,
                           security=tls_settings(cert, key, ca, mutual=True)).start()
    yield handle
    handle.stop()


def infer_once(client: InferenceClient) -> None:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(data)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + data)


def test_tls_with_our_clients(tls_server: RunningServer, alpha: Pki) -> None:
    with InferenceClient(tls_server.url, ssl=True, root_certificates=alpha.ca) as client:
        assert client.is_server_ready()
        infer_once(client)

    async def aio() -> bool:
        async with AsyncInferenceClient(tls_server.url, ssl=True, root_certificates=str(alpha.ca)) as client:
            return await client.is_server_ready()

    assert asyncio.run(aio())
    assert peer_serial("127.0.0.1", tls_server.server.port, alpha.ca) == alpha.server.serial


def test_plaintext_and_untrusting_clients_fail_cleanly(tls_server: RunningServer, alpha: Pki, beta: Pki) -> None:
    for kwargs in ({}, {"ssl": True, "root_certificates": beta.ca}):
        with InferenceClient(tls_server.url, **kwargs) as client:  # type: ignore[arg-type]
            start = time.monotonic()
            with pytest.raises(InferenceServerError) as caught:
                client.is_server_live(client_timeout=20)
            assert caught.value.status.name == "UNAVAILABLE", caught.value
            assert time.monotonic() - start < 10  # refused at the handshake, not timed out
    with InferenceClient(tls_server.url, ssl=True, root_certificates=alpha.ca) as client:
        assert client.is_server_live()  # and the server goes on serving


def test_mutual_tls_requires_a_client_certificate_from_the_root(mtls_server: RunningServer, alpha: Pki,
                                                                beta: Pki) -> None:
    refused = (
        {"ssl": True, "root_certificates": alpha.ca},  # no client certificate
        {"ssl": True, "root_certificates": alpha.ca, "private_key": beta.client.key,
         "certificate_chain": beta.client.cert},  # signed by another CA
        {},
    )
    for kwargs in refused:
        with InferenceClient(mtls_server.url, **kwargs) as client:  # type: ignore[arg-type]
            with pytest.raises(InferenceServerError) as caught:
                client.is_server_live(client_timeout=20)
            assert caught.value.status.name == "UNAVAILABLE", (kwargs, caught.value)
    with InferenceClient(mtls_server.url, ssl=True, root_certificates=alpha.ca, private_key=alpha.client.key,
                         certificate_chain=alpha.client.cert) as client:
        assert client.is_server_live()
        infer_once(client)


def test_reload_switches_new_connections_and_keeps_open_ones(mtls_server: RunningServer, alpha: Pki,
                                                             beta: Pki, tmp_path: Path) -> None:
    port = mtls_server.server.port
    # a channel that trusts only alpha: if its connection were dropped, reconnecting would fail after the reload
    old = InferenceClient(mtls_server.url, ssl=True, root_certificates=alpha.ca, private_key=alpha.client.key,
                          certificate_chain=alpha.client.cert)
    try:
        assert old.is_server_live()
        install(beta, tmp_path / "live", ca_bundle=[alpha.ca, beta.ca])  # beta's pair; both CAs for clients
        assert mtls_server.server.reload_credentials()
        assert peer_serial("127.0.0.1", port, beta.ca, alpha.client) == beta.server.serial
        for _ in range(20):
            infer_once(old)
        with InferenceClient(mtls_server.url, ssl=True, root_certificates=beta.ca, private_key=beta.client.key,
                             certificate_chain=beta.client.cert) as new:
            assert new.is_server_live()
        with InferenceClient(mtls_server.url, ssl=True, root_certificates=alpha.ca, private_key=alpha.client.key,
                             certificate_chain=alpha.client.cert) as stale:
            with pytest.raises(InferenceServerError):  # a new connection no longer sees alpha's server cert
                stale.is_server_live(client_timeout=20)
    finally:
        old.close()


def test_a_broken_replacement_keeps_the_current_certificate(mtls_server: RunningServer, alpha: Pki,
                                                            beta: Pki, tmp_path: Path) -> None:
    live = tmp_path / "live"
    (live / "server.key").write_bytes(beta.server.key.read_bytes())  # a key that does not match the cert
    assert not mtls_server.server.reload_credentials()
    (live / "server.pem").write_text("not a certificate")
    assert not mtls_server.server.reload_credentials()
    assert peer_serial("127.0.0.1", mtls_server.server.port, alpha.ca, alpha.client) == alpha.server.serial


def test_client_tls_arguments_are_checked(alpha: Pki) -> None:
    with pytest.raises(ValueError, match="need ssl=True"):
        InferenceClient("127.0.0.1:1", root_certificates=alpha.ca)
    with pytest.raises(ValueError, match="go together"):
        InferenceClient("127.0.0.1:1", ssl=True, private_key=alpha.client.key)
    with pytest.raises(FileNotFoundError):
        InferenceClient("127.0.0.1:1", ssl=True, root_certificates="/nonexistent/ca.pem")

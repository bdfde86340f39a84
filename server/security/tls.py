"""TLS for the gRPC port (Triton's flags) and the metrics endpoint, with certificates reloaded on SIGHUP.

gRPC: grpcio's ``dynamic_ssl_server_credentials`` takes a fetcher that the
core calls on every new TLS handshake; returning a new
``ssl_server_certificate_configuration`` switches the certificate for that and
later handshakes, returning None keeps the current one. Connections already
established keep the session they negotiated, so a reload drops nothing.
``reload()`` (SIGHUP) reads and checks the files; the next handshake picks
the new pair up. A pair that fails to load is logged and the old one stays.

Metrics: ``ssl_context()`` is asked on every new connection; a reload builds a
fresh ``ssl.SSLContext`` (a fresh one, so a root certificate that was removed
stops being trusted), the same effect.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TlsError

if TYPE_CHECKING:  # grpc is imported where it is used: the CLI parses flags without it
    import grpc

__all__ = ["CertificateSource", "TlsError", "TlsSettings"]

log = logging.getLogger("tensorgate.security")


@dataclass(frozen=True)
class TlsSettings:
    """Triton's ``--grpc-use-ssl``, ``--grpc-server-cert``, ``--grpc-server-key``, ``--grpc-root-cert``,
    ``--grpc-use-ssl-mutual`` (mutual implies TLS; the root certificate then verifies clients)."""

    use_ssl: bool = False
    server_cert: Path | None = None
    server_key: Path | None = None
    root_cert: Path | None = None
    mutual: bool = False

    @property
    def enabled(self) -> bool:
        return self.use_ssl or self.mutual

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.server_cert is None or self.server_key is None:
            raise TlsError("TLS needs --grpc-server-cert and --grpc-server-key")
        if self.mutual and self.root_cert is None:
            raise TlsError("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA that signs client certificates)")


@dataclass(frozen=True)
class _Material:
    key: bytes
    chain: bytes
    root: bytes | None


def _read(cert: Path, key: Path, root: Path | None) -> _Material:
    """Read and check the files: the key must match the certificate (ssl checks the pair)."""
    try:
        material = _Material(key.read_bytes(), cert.read_bytes(), root.read_bytes() if root else None)
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        if root is not None:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=root)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsError(f"cannot use certificate {str(cert)!r} / key {str(key)!r}: {exc}") from exc
    return material


class CertificateSource:
    """One certificate/key pair (+ optional root) from files, re-read on ``reload()``.

    Args:
        cert / key / root: PEM files; ``root`` verifies client certificates when ``mutual``.
        mutual: require and verify a client certificate.
    """

    def __init__(self, cert: Path, key: Path, root: Path | None = None, mutual: bool = False) -> None:
        self.cert, self.key, self.root, self.mutual = cert, key, root, mutual
        self._material = _read(cert, key, root)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()
        self._context = self._new_context()
        self.reloads = 0

    @classmethod
    def from_settings(cls, settings: TlsSettings) -> CertificateSource | None:
        settings.validate()
        if not settings.enabled:
            return None
        assert settings.server_cert is not None and settings.server_key is not None
        return cls(settings.server_cert, settings.server_key, settings.root_cert, settings.mutual)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        import grpc

        m = self._material
        return grpc.ssl_server_certificate_configuration([(m.key, m.chain)], m.root)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials whose certificate follows ``reload()`` on new handshakes."""
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # grpcio documents None as "keep"; the stub omits it
            require_client_authentication=self.mutual,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # called by gRPC's core on each new handshake: None keeps the current certificate
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def ssl_context(self) -> ssl.SSLContext:
        """The current server-side context for the metrics endpoint (asked per connection)."""
        return self._context

    def _new_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.mutual and self.root is not None:
            ctx.load_verify_locations(cafile=self.root)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def reload(self) -> bool:
        """Re-read the files; True when the new pair is in use for new handshakes."""
        try:
            material = _read(self.cert, self.key, self.root)
        except TlsError as exc:
            log.error("certificate reload failed, keeping the current certificate: %s", exc)
            return False
        try:
            context = self._new_context()
        except OSError as exc:  # the files changed again between the two reads
            log.error("certificate reload failed, keeping the current certificate: %s", exc)
            return False
        with self._lock:
            self._material, self._context = material, context
            self._pending = self._configuration()
            self.reloads += 1
        log.info("certificate reloaded from %r: new connections use it", str(self.cert))
        return True

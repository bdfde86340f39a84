"""Real certificates for the TLS tests (tests/security, tests/interop), made with ``cryptography`` (EC P-256)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    serial: int


@dataclass(frozen=True)
class Pki:
    """One CA and what it signed: a server pair for 127.0.0.1/localhost/::1 and a client pair."""

    ca: Path
    server: Pair
    client: Pair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_pki(folder: Path, name: str) -> Pki:
    """A fresh CA named ``name`` with a server and a client certificate, as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA")).issuer_name(_name(f"{name} CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(role: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{name} {role}")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pair = Pair(folder / f"{role}.pem", folder / f"{role}.key", serial)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair

    server = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(f"{name}-client")])
    return Pki(folder / "ca.pem", server, client)


def install(pki: Pki, folder: Path, ca_bundle: list[Path] | None = None) -> tuple[Path, Path, Path]:
    """Copy the server pair and the CA (or a bundle of CAs) to fixed names in ``folder``: the files a server
    is started with, replaced later to test a reload. Returns (cert, key, ca)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key, ca = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    # write next to the target and rename: a reader never sees half a file
    for src, dst in ((pki.server.cert, cert), (pki.server.key, key)):
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    tmp = ca.with_suffix(".tmp")
    tmp.write_bytes(b"".join(p.read_bytes() for p in (ca_bundle or [pki.ca])))
    tmp.replace(ca)
    return cert, key, ca


def peer_serial(host: str, port: int, ca: Path, client: Pair | None = None) -> int:
    """The serial number of the certificate a new TLS connection to host:port is shown."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number

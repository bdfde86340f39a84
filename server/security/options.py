"""Security settings and their `serve` flags: TLS (Triton's names), restricted groups, tokens, metrics TLS."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..telemetry.options import _bool
from .access import GROUPS, AccessPolicy, Restriction, parse_restriction
from .errors import AccessError, TlsError
from .tls import CertificateSource, TlsSettings
from .tokens import TokenFile

__all__ = ["SecuritySettings", "add_security_flags", "security_settings_from_args"]


@dataclass(frozen=True)
class SecuritySettings:
    """Everything about who may connect and call what.

    Args:
        tls: the gRPC port's TLS (Triton's ``--grpc-use-ssl*`` flags).
        restrictions: ``--grpc-restricted-protocol`` values.
        auth_token_file: bearer tokens, one per line (None: no token check).
        auth_exempt_groups: groups callable without a token (health: probes and load balancers).
        metrics_use_ssl: serve /metrics over HTTPS.
        metrics_server_cert / metrics_server_key: its pair (default: the gRPC port's).
    """

    tls: TlsSettings = field(default_factory=TlsSettings)
    restrictions: tuple[Restriction, ...] = ()
    auth_token_file: Path | None = None
    auth_exempt_groups: tuple[str, ...] = ("health",)
    metrics_use_ssl: bool = False
    metrics_server_cert: Path | None = None
    metrics_server_key: Path | None = None

    def policy(self) -> AccessPolicy:
        """The access policy; raises SecurityError when the token file or a restriction cannot be used."""
        tokens = TokenFile(self.auth_token_file) if self.auth_token_file is not None else None
        return AccessPolicy(self.restrictions, tokens, self.auth_exempt_groups)

    def grpc_certificates(self) -> CertificateSource | None:
        return CertificateSource.from_settings(self.tls)

    def metrics_certificates(self, grpc: CertificateSource | None) -> CertificateSource | None:
        """The metrics endpoint's pair: its own files, else the gRPC port's (shared, so one reload serves both)."""
        if not self.metrics_use_ssl:
            return None
        if self.metrics_server_cert is None and self.metrics_server_key is None:
            if grpc is None:
                raise TlsError("--metrics-use-ssl needs --metrics-server-cert/--metrics-server-key "
                               "or the gRPC port's --grpc-server-cert/--grpc-server-key")
            return CertificateSource(grpc.cert, grpc.key)
        if self.metrics_server_cert is None or self.metrics_server_key is None:
            raise TlsError("--metrics-server-cert and --metrics-server-key go together")
        return CertificateSource(self.metrics_server_cert, self.metrics_server_key)


def _env(name: str) -> str | None:
    return os.environ.get(f"TENSORGATE_{name}")


def _restriction(text: str) -> Restriction:
    try:
        return parse_restriction(text)
    except AccessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown group(s) {unknown}; expected some of {', '.join(GROUPS)}")
    return groups


_T = TypeVar("_T")


def _from_env(parse: Callable[[str], _T], name: str, default: str) -> _T:
    """A flag's default from TENSORGATE_<name>; a bad value stops with its reason, not a traceback."""
    text = _env(name) or default
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"tensorgate serve: error: TENSORGATE_{name}: {exc}") from None


def _path(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


def add_security_flags(p: argparse.ArgumentParser) -> None:
    """The `serve` flags for TLS and access control (Triton's names where Triton has them)."""
    g = p.add_argument_group("security (README: Security)")
    flag: dict[str, Any] = {"type": _bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    g.add_argument("--grpc-use-ssl", default=_from_env(_bool, "GRPC_USE_SSL", "false"), **flag,
                   help="serve gRPC over TLS with --grpc-server-cert/--grpc-server-key (default false)")
    g.add_argument("--grpc-use-ssl-mutual", default=_from_env(_bool, "GRPC_USE_SSL_MUTUAL", "false"), **flag,
                   help="mutual TLS: also require a client certificate signed by --grpc-root-cert (implies TLS)")
    g.add_argument("--grpc-server-cert", type=Path, default=_path("GRPC_SERVER_CERT"),
                   help="PEM certificate chain of the server (re-read on SIGHUP)")
    g.add_argument("--grpc-server-key", type=Path, default=_path("GRPC_SERVER_KEY"),
                   help="PEM private key of the server (re-read on SIGHUP)")
    g.add_argument("--grpc-root-cert", type=Path, default=_path("GRPC_ROOT_CERT"),
                   help="PEM root certificate(s) that client certificates must chain to (mutual TLS)")
    g.add_argument("--grpc-restricted-protocol", action="append", type=_restriction,
                   default=_from_env(lambda text: [_restriction(t) for t in text.split()],
                                     "GRPC_RESTRICTED_PROTOCOL", ""),
                   metavar="GROUPS:KEY=VALUE",
                   help="Triton's restricted protocols, repeatable: calls in these groups (comma-separated: "
                   f"{', '.join(GROUPS)}) need the header 'triton-grpc-protocol-KEY: VALUE', "
                   "else UNAVAILABLE")
    g.add_argument("--grpc-auth-token-file", type=Path, default=_path("GRPC_AUTH_TOKEN_FILE"),
                   help="bearer tokens, one per line: calls must send 'authorization: Bearer <token>' "
                   "(else UNAUTHENTICATED); the file is re-read when it changes and on SIGHUP")
    g.add_argument("--grpc-auth-exempt", type=_groups, default=_from_env(_groups, "GRPC_AUTH_EXEMPT", "health"),
                   metavar="GROUPS", help="groups callable without a token (default health, for probes; "
                   "'' exempts none)")
    g.add_argument("--metrics-use-ssl", default=_from_env(_bool, "METRICS_USE_SSL", "false"), **flag,
                   help="serve /metrics over HTTPS (default false)")
    g.add_argument("--metrics-server-cert", type=Path, default=_path("METRICS_SERVER_CERT"),
                   help="the metrics endpoint's PEM certificate (default: --grpc-server-cert)")
    g.add_argument("--metrics-server-key", type=Path, default=_path("METRICS_SERVER_KEY"),
                   help="the metrics endpoint's PEM key (default: --grpc-server-key)")


def security_settings_from_args(args: Any) -> SecuritySettings:
    """The settings the flags give; exits with the reason when TLS settings do not fit together."""
    tls = TlsSettings(
        use_ssl=bool(args.grpc_use_ssl),
        server_cert=args.grpc_server_cert,
        server_key=args.grpc_server_key,
        root_cert=args.grpc_root_cert,
        mutual=bool(args.grpc_use_ssl_mutual),
    )
    try:
        tls.validate()
    except TlsError as exc:
        raise SystemExit(f"tensorgate serve: error: {exc}") from None
    return SecuritySettings(
        tls=tls,
        restrictions=tuple(args.grpc_restricted_protocol or ()),
        auth_token_file=args.grpc_auth_token_file,
        auth_exempt_groups=tuple(args.grpc_auth_exempt),
        metrics_use_ssl=bool(args.metrics_use_ssl),
        metrics_server_cert=args.metrics_server_cert,
        metrics_server_key=args.metrics_server_key,
    )

"""Who may connect and what they may call: TLS, restricted groups, bearer tokens.

``access`` decides for any transport; ``grpc_guard`` applies it to gRPC;
``tls`` holds the certificates (reloadable); ``options`` has the flags.
"""

from __future__ import annotations

from .access import GROUPS, AccessError, AccessPolicy, Refusal, RefusalKind, Restriction, parse_restriction
from .options import SecuritySettings, add_security_flags, security_settings_from_args
from .tls import CertificateSource, TlsError, TlsSettings
from .tokens import TokenFile

__all__ = [
    "GROUPS",
    "AccessError",
    "AccessPolicy",
    "CertificateSource",
    "Refusal",
    "RefusalKind",
    "Restriction",
    "SecuritySettings",
    "TlsError",
    "TlsSettings",
    "TokenFile",
    "add_security_flags",
    "parse_restriction",
    "security_settings_from_args",
]

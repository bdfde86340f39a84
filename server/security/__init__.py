"""Who may connect and what they may call: TLS, restricted groups, bearer tokens.

``access`` decides for any transport; ``grpc_guard`` applies it to gRPC;
``tls`` holds the certificates (reloadable); ``options`` has the flags.
"""

from __future__ import annotations

from .access import GROUPS, AccessPolicy, Refusal, RefusalKind, Restriction, parse_restriction
from .errors import AccessError, SecurityError, TlsError, TokenFileError
from .options import SecuritySettings, add_security_flags, security_settings_from_args
from .tls import CertificateSource, TlsSettings
from .tokens import TokenFile

__all__ = [
    "GROUPS",
    "AccessError",
    "AccessPolicy",
    "CertificateSource",
    "Refusal",
    "RefusalKind",
    "Restriction",
    "SecurityError",
    "SecuritySettings",
    "TlsError",
    "TlsSettings",
    "TokenFile",
    "TokenFileError",
    "add_security_flags",
    "parse_restriction",
    "security_settings_from_args",
]

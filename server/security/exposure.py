"""The start-up warning when the server is reachable from other hosts without protection."""

from __future__ import annotations

import ipaddress

from .access import AccessPolicy

__all__ = ["SENSITIVE_GROUPS", "exposure_warning", "is_loopback"]

#: Groups that change the server (log and trace files and levels, which models are loaded).
SENSITIVE_GROUPS = ("logging", "trace", "model-repository")


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost'; any other name or a wildcard (0.0.0.0, ::) is reachable from outside."""
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(address: str, tls: bool, policy: AccessPolicy) -> str | None:
    """One line naming what is missing, or None when the address is loopback or nothing is."""
    if is_loopback(address):
        return None
    guarded = policy.restricted_groups() | policy.token_groups()
    open_groups = [g for g in SENSITIVE_GROUPS if g not in guarded]
    missing = []
    if not tls:
        missing.append("without TLS (--grpc-use-ssl)")
    if open_groups:
        missing.append(f"with {', '.join(open_groups)} open to any client "
                       "(--grpc-restricted-protocol or --grpc-auth-token-file)")
    if not missing:
        return None
    return (f"listening on {address}, reachable from other hosts, {' and '.join(missing)}; "
            "see the README's Security section")

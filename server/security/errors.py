"""The security package's errors: settings that cannot be used, so the server refuses to start.

    SecurityError (ValueError)
    ├── AccessError     (a restriction or token-exempt group that cannot be used)
    ├── TlsError        (TLS flags that do not fit together, certificate files that do not load)
    └── TokenFileError  (the token file is missing, unreadable or empty at start)
"""

from __future__ import annotations

__all__ = ["AccessError", "SecurityError", "TlsError", "TokenFileError"]


class SecurityError(ValueError):
    """A security setting that cannot be used; the message says which and why."""


class AccessError(SecurityError):
    """A restriction or token setting that cannot be used."""


class TlsError(SecurityError):
    """TLS settings or certificate files that cannot be used."""


class TokenFileError(SecurityError):
    """The token file cannot be used at start."""

"""Bearer tokens from a file, one per line, re-read when the file changes.

The file is looked at (``os.stat``) at most once a second from the request
path; a changed size, mtime or inode re-reads it. A file that cannot be read
keeps the tokens last read (a rename in progress must not open the door or
lock everyone out) and logs a warning; a readable file with no tokens refuses
everyone. Tokens are kept as SHA-256 digests and a presented token is compared
with every one of them in constant time, so neither the timing nor an early
exit says which token, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path

from .errors import TokenFileError

__all__ = ["TokenFile", "read_tokens"]

log = logging.getLogger("tensorgate.security")

_CHECK_EVERY_S = 1.0


def read_tokens(path: Path) -> list[bytes]:
    """The SHA-256 digests of the file's tokens: one per line; blank lines and ``#`` comments skipped."""
    digests = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            digests.append(hashlib.sha256(token.encode()).digest())
    return digests


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TokenFile:
    """The accepted tokens, following ``path``; raises TokenFileError at construction when the file is unusable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._signature = _signature(path)
            self._mode = os.stat(path).st_mode
            self._digests = read_tokens(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TokenFileError(f"cannot read the token file {str(path)!r}: {reason}") from exc
        if not self._digests:
            raise TokenFileError(f"the token file {str(path)!r} holds no token")
        if self._mode & 0o077:
            log.warning("token file %r can be read by other users (mode %o): chmod 600 it",
                        str(path), self._mode & 0o777)
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._failure = ""  # the last reload failure, logged once until it changes

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, token: str) -> bool:
        """Whether ``token`` is one of the file's tokens (an empty token never is)."""
        self._maybe_reload()
        if not token:
            return False
        presented = hashlib.sha256(token.encode()).digest()
        found = False
        for digest in self._digests:  # no early exit: every digest is compared
            found |= hmac.compare_digest(presented, digest)
        return found

    def reload(self) -> None:
        """Re-read the file now (SIGHUP); on failure keep the tokens last read."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                signature = _signature(self.path)
                digests = read_tokens(self.path)
            except (OSError, UnicodeDecodeError) as exc:
                failure = type(exc).__name__
                if failure != self._failure:
                    log.warning("token file %r unreadable (%s); keeping the %d token(s) last read",
                                str(self.path), failure, len(self._digests))
                self._failure = failure
                return
            self._signature, self._digests, self._failure = signature, digests, ""
        if digests:
            log.info("token file %r read: %d token(s)", str(self.path), len(digests))
        else:
            log.warning("token file %r holds no token: every guarded call is refused", str(self.path))

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < _CHECK_EVERY_S:
            return
        self._checked = now
        try:
            changed = _signature(self.path) != self._signature
        except OSError:
            changed = True  # reload() logs it and keeps the old tokens
        if changed:
            self.reload()

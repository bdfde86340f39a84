"""Access control that any transport can ask: restricted groups (Triton's) and bearer tokens.

A transport (the gRPC interceptors in ``grpc_guard.py``, a REST route) names the
group a call belongs to and hands over its headers; ``AccessPolicy.check``
answers ``None`` (allowed) or the ``Refusal`` to send back. Nothing here knows
gRPC or HTTP: a refusal carries a transport-neutral kind that each transport
maps to its own status (UNAVAILABLE / 503, UNAUTHENTICATED / 401).

Triton's semantics for ``--grpc-restricted-protocol=<groups>:<key>=<value>``: a
call in a restricted group must carry the header
``triton-grpc-protocol-<key>: <value>``; otherwise it is refused with
"This protocol is restricted, expecting header 'triton-grpc-protocol-<key>'".
Beyond Triton, an optional token file: calls outside the exempt groups must
carry ``authorization: Bearer <token>`` with a token listed in the file.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import AccessError
from .tokens import TokenFile

__all__ = [
    "GROUPS",
    "GRPC_REFUSED_MESSAGE",
    "HEADER_PREFIX",
    "HTTP_REFUSED_MESSAGE",
    "AccessError",
    "AccessPolicy",
    "Refusal",
    "RefusalKind",
    "Restriction",
    "parse_restriction",
]

#: Triton's restricted-protocol groups (its RestrictedCategory), in its order.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
#: A restriction's key travels as this header (Triton's gRPC prefix).
HEADER_PREFIX = "triton-grpc-protocol-"
#: Triton's gRPC refusal (UNAVAILABLE).
GRPC_REFUSED_MESSAGE = "This protocol is restricted, expecting header '{header}'"
HTTP_REFUSED_MESSAGE = "This API is restricted, expecting header '{header}'"  # Triton's HTTP endpoint: bare key


class RefusalKind(enum.Enum):
    RESTRICTED = "restricted"  # gRPC UNAVAILABLE (Triton), HTTP 403
    UNAUTHENTICATED = "unauthenticated"  # gRPC UNAUTHENTICATED, HTTP 401


@dataclass(frozen=True)
class Refusal:
    kind: RefusalKind
    message: str


_UNAUTHENTICATED = Refusal(RefusalKind.UNAUTHENTICATED, "missing or invalid bearer token")


@dataclass(frozen=True)
class Restriction:
    """Calls in ``groups`` need the header ``<prefix><key>`` with the value ``value``."""

    groups: frozenset[str]
    key: str
    value: str

    def header(self, prefix: str = HEADER_PREFIX) -> str:
        """The header a transport reads: gRPC's ``triton-grpc-protocol-<key>`` by default."""
        return prefix + self.key

    @functools.cached_property
    def digest(self) -> bytes:
        return _digest(self.value)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def parse_restriction(text: str) -> Restriction:
    """One ``--grpc-restricted-protocol`` value: ``<group>[,<group>...]:<key>=<value>``."""
    groups_text, sep, pair = text.partition(":")
    key, eq, value = pair.partition("=")
    if not sep or not eq:
        raise AccessError(f"restricted protocol {text!r}: expected <groups>:<key>=<value>")
    groups = [g.strip() for g in groups_text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        raise AccessError(
            f"restricted protocol {text!r}: unknown group(s) {unknown or '(none given)'}; "
            f"expected some of {', '.join(GROUPS)}"
        )
    key = key.strip().lower()  # gRPC metadata keys are lower case on the wire
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise AccessError(f"restricted protocol {text!r}: the key must be letters, digits, '-', '_' or '.'")
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise AccessError(f"restricted protocol {text!r}: the value must be non-empty printable text")
    return Restriction(frozenset(groups), key, value)


def _by_group(restrictions: Sequence[Restriction]) -> dict[str, Restriction]:
    table: dict[str, Restriction] = {}
    for r in restrictions:
        for group in r.groups:
            if group in table:  # Triton refuses a group restricted twice
                raise AccessError(f"group '{group}' is restricted more than once")
            table[group] = r
    return table


class AccessPolicy:
    """The decision for one call: allowed (``None``) or the refusal to answer with.

    Args:
        restrictions: parsed ``--grpc-restricted-protocol`` values; a group may appear in one only.
        tokens: the bearer-token file, or None for no token check.
        token_exempt_groups: groups that need no token (default: health, for probes and load balancers).
        header_prefix: what goes before a restriction's key to name its header (gRPC: Triton's
            ``triton-grpc-protocol-``; Triton's HTTP endpoint uses the bare key, prefix "").
        refused_message: the refusal's text, ``{header}`` filled in (gRPC: Triton's wording).
    """

    def __init__(
        self,
        restrictions: Sequence[Restriction] = (),
        tokens: TokenFile | None = None,
        token_exempt_groups: Iterable[str] = ("health",),
        header_prefix: str = HEADER_PREFIX,
        refused_message: str = GRPC_REFUSED_MESSAGE,
    ) -> None:
        self._restrictions = tuple(restrictions)
        self._exempt_groups = tuple(token_exempt_groups)
        self._restricted = _by_group(restrictions)
        self._prefix = header_prefix
        # the refusal of each restriction, built once: a refusal costs no formatting
        self._refusals = {r: Refusal(RefusalKind.RESTRICTED, refused_message.format(header=r.header(header_prefix)))
                          for r in self._restricted.values()}
        self._tokens = tokens
        exempt = frozenset(self._exempt_groups)
        unknown = sorted(exempt - set(GROUPS))
        if unknown:
            raise AccessError(f"unknown token-exempt group(s) {unknown}; expected some of {', '.join(GROUPS)}")
        self._token_groups = frozenset(GROUPS) - exempt if tokens is not None else frozenset()
        names = {r.header(header_prefix) for r in self._restricted.values()}
        self._headers = frozenset(names | {"authorization"} if self._token_groups else names)
        self._refused: dict[tuple[str, RefusalKind], int] = {}
        self._lock = threading.Lock()  # only refusals take it

    @property
    def active(self) -> bool:
        """Whether any call can be refused (no policy: the transport installs no check at all)."""
        return bool(self._restricted) or bool(self._token_groups)

    def guarded(self, group: str) -> bool:
        """Whether a call in ``group`` needs a header (restriction or token)."""
        return group in self._restricted or group in self._token_groups

    @property
    def headers(self) -> frozenset[str]:
        """The header names the decisions read (lower case); a transport may pass only these."""
        return self._headers

    def check(self, group: str, headers: Mapping[str, str]) -> Refusal | None:
        """Allow or refuse a call in ``group``; ``headers`` has lower-case names.

        The token is checked before the restriction, so a caller without a token
        learns nothing, not even the restricted header's name.
        """
        if group in self._token_groups:
            assert self._tokens is not None
            if not self._tokens.accepts(_bearer(headers.get("authorization", ""))):
                return self._refuse(group, _UNAUTHENTICATED)
        restriction = self._restricted.get(group)
        if restriction is not None:
            sent = headers.get(restriction.header(self._prefix))
            # digests compared in constant time: the time taken says nothing about the value or its length
            if sent is None or not hmac.compare_digest(_digest(sent), restriction.digest):
                return self._refuse(group, self._refusals[restriction])
        return None

    def _refuse(self, group: str, refusal: Refusal) -> Refusal:
        # counted, never logged: a refused caller must not be able to flood the log
        with self._lock:
            key = (group, refusal.kind)
            self._refused[key] = self._refused.get(key, 0) + 1
        return refusal

    def refused(self) -> dict[tuple[str, RefusalKind], int]:
        """Calls refused so far, by group and kind (the tensorgate_access_refused_total metric)."""
        with self._lock:
            return dict(self._refused)

    def describe(self) -> list[str]:
        """Start-up lines: what is guarded and how (never the values)."""
        lines = []
        for r in dict.fromkeys(self._restricted.values()):
            groups = ", ".join(g for g in GROUPS if g in r.groups)
            lines.append(f"  restricted: {groups} (header '{r.header(self._prefix)}')")
        if self._token_groups:
            assert self._tokens is not None
            exempt = [g for g in GROUPS if g not in self._token_groups]
            lines.append(f"  bearer tokens: {len(self._tokens)} from {str(self._tokens.path)!r}, required on every "
                         f"group{' but ' + ', '.join(exempt) if exempt else ''}")
        return lines

    def for_http(self) -> AccessPolicy:
        """The same restrictions and token file in Triton's HTTP form: the header is the bare key."""
        return AccessPolicy(self._restrictions, self._tokens, self._exempt_groups, "", HTTP_REFUSED_MESSAGE)

    def reload(self) -> None:
        """Re-read the token file now (SIGHUP); it is also re-read when it changes."""
        if self._tokens is not None:
            self._tokens.reload()

    def restricted_groups(self) -> frozenset[str]:
        return frozenset(self._restricted)

    def token_groups(self) -> frozenset[str]:
        return self._token_groups


def _bearer(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""

"""Where a client connects, and how it balances and retries: one gRPC target plus a service config.

A client is given one address, several replica addresses, or a resolver name
(``dns:///tensorgate-headless.ns.svc:8001``). Several replicas are spread with
gRPC's ``round_robin`` policy: the channel keeps a connection to every replica
and drops one from the rotation as soon as it goes away (GOAWAY on drain, a
reset on a crash). A call that fails with UNAVAILABLE (a replica draining,
crashed or with the model not loaded) is retried by gRPC itself under a
service-config ``retryPolicy``: the next attempt goes to the next replica in
the rotation, and the caller's deadline bounds all attempts together.
Inference requests are idempotent (a model run has no side effect on the
server), so retrying them is safe; ``retry=False`` turns it off.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .pb import grpc_service_pb2 as pb

__all__ = ["RetryPolicy", "Target", "resolve_target"]

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: The RPCs retried: inference and the read-only calls, all idempotent. Not retried: the
#: bidirectional ModelStreamInfer (answers already delivered cannot be replayed elsewhere) and
#: the calls that change one server's state (model load/unload, shared-memory registration,
#: trace and log settings), which belong on a single-address client anyway.
_RETRIED_METHODS = (
    "ModelInfer",
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
)
#: gRPC's own ceiling on attempts; a larger value is clamped to it by gRPC.
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retryPolicy for UNAVAILABLE, as the client's service config states it.

    Backoff before attempt n is random in [0, min(initial * multiplier**(n-1), max)]
    (gRPC's jittered backoff). The call's deadline (``client_timeout``) covers every
    attempt: a retry never extends it.

    Args:
        max_attempts: attempts per call, the first included (2 to 5).
        initial_backoff_s: the first backoff bound, seconds.
        max_backoff_s: the largest backoff bound, seconds.
        backoff_multiplier: growth of the bound per attempt.
        throttle_tokens: gRPC's retry throttling, per channel: each failure costs a token, each
            success earns ``throttle_ratio``; below half the tokens no call is retried. So a
            crash (16 calls in flight fail at once) is retried, while sustained overload
            (queue-full UNAVAILABLE) is not multiplied by retries.
        throttle_ratio: tokens earned per success.
    """

    max_attempts: int = MAX_ATTEMPTS
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    throttle_tokens: int = 100
    throttle_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 2 to {MAX_ATTEMPTS} (gRPC's limit), not {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and multiplier must be positive")
        if not (0 < self.throttle_tokens <= 1000 and 0 < self.throttle_ratio):
            raise ValueError("throttle_tokens must be 1 to 1000 (gRPC's limit) and throttle_ratio positive")

    def as_config(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s:.6f}s",
            "maxBackoff": f"{self.max_backoff_s:.6f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


@dataclass(frozen=True)
class Target:
    """A resolved gRPC target and the channel options that carry its service config."""

    uri: str
    balanced: bool
    options: tuple[tuple[str, Any], ...]


_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def _split(address: str) -> tuple[str, str]:
    """'host:port' or '[v6]:port' -> (host, port); a missing port is an error (no silent default)."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if sep and rest.startswith(":") and rest[1:].isdigit():
            return host, rest[1:]
    else:
        host, sep, port = address.rpartition(":")
        if sep and port.isdigit() and ":" not in host:
            return host, port
    raise ValueError(f"replica address {address!r} is not 'host:port' or '[ipv6]:port'")


def _literal_target(addresses: Sequence[str]) -> str:
    """Several IP literals as one ipv4:/ipv6: target (gRPC's static multi-address resolver)."""
    families: set[int] = set()
    parts: list[str] = []
    for address in addresses:
        host, port = _split(address)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"several replica addresses must be IP literals ({host!r} is a name); for host names give "
                "one 'dns:///name:port' target whose DNS record lists every replica (a headless Service)"
            ) from None
        families.add(ip.version)
        parts.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError("replica addresses must all be IPv4 or all be IPv6 (one gRPC target holds one family)")
    return ("ipv6:" if 6 in families else "ipv4:") + ",".join(parts)


def _service_config(balanced: bool, retry: RetryPolicy | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        # gRPC's client-side health checking (grpc.health.v1 Watch on each replica): a replica that reports
        # NOT_SERVING, as a draining one does at once, gets no new calls while its admitted ones finish
        config["healthCheckConfig"] = {"serviceName": ""}
    if retry is not None:
        config["methodConfig"] = [
            {
                "name": [{"service": _SERVICE.full_name, "method": name} for name in _RETRIED_METHODS],
                "retryPolicy": retry.as_config(),
            }
        ]
        config["retryThrottling"] = {"maxTokens": retry.throttle_tokens, "tokenRatio": retry.throttle_ratio}
    return config


def resolve_target(url: str | Sequence[str], retry: RetryPolicy | bool = True) -> Target:
    """The gRPC target for one address, several replicas or a resolver URI, with its service config.

    Args:
        url: "host:port"; a list of "host:port" IP literals of one family (balanced round-robin);
            or a gRPC target URI ("dns:///name:port", "ipv4:a:p1,b:p2", ...). dns: and
            multi-address ipv4:/ipv6: targets are balanced round-robin.
        retry: True for the default ``RetryPolicy``, a policy, or False for no retries.

    Returns:
        The target URI, whether it is balanced, and the channel options for it.

    Raises:
        ValueError: no address, a malformed one, host names in a list, or mixed IP families.
    """
    if isinstance(url, str):
        uri = url
        balanced = url.startswith("dns:") or (url.startswith(("ipv4:", "ipv6:")) and "," in url)
    else:
        addresses = list(url)
        if not addresses:
            raise ValueError("no replica address given")
        if any(a.startswith(_SCHEMES) for a in addresses):
            raise ValueError("a target URI (dns:///..., ipv4:...) is given alone, not in a list")
        uri = addresses[0] if len(addresses) == 1 else _literal_target(addresses)
        balanced = len(addresses) > 1
    policy: RetryPolicy | None
    if isinstance(retry, RetryPolicy):
        policy = retry
    else:
        policy = RetryPolicy() if retry else None
    config = _service_config(balanced, policy)
    options: tuple[tuple[str, Any], ...] = ()
    if config:
        options = (("grpc.service_config", json.dumps(config, separators=(",", ":"))),)
    return Target(uri, balanced, options)

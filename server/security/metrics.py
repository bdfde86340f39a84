"""The access policy's refusals as a Prometheus counter (brute force and misconfigured clients show here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .access import AccessPolicy

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["AccessCollector"]

_NAME = "tensorgate_access_refused_total"


class AccessCollector:
    """``tensorgate_access_refused_total{group, reason}``: reason is ``restricted`` or ``unauthenticated``."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        from ..telemetry.metrics import family

        metric = family(_NAME, "Calls refused by --grpc-restricted-protocol or --grpc-auth-token-file", "counter")
        for (group, kind), count in sorted(self._policy.refused().items(), key=lambda item: item[0][0]):
            metric.add_sample(_NAME, {"group": group, "reason": kind.value}, count)
        yield metric

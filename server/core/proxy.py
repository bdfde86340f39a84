"""The front end's stand-in for a model version's Scheduler when the engine core runs in its own process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import RetiredError
from ..request import InferRequest
from ..statistics import ModelStatistics
from .control import RemoteStatistics

if TYPE_CHECKING:
    from ..telemetry.drift import DriftMonitor
    from .link import CoreLink, VersionSlot

__all__ = ["CoreScheduler", "RemoteDrift", "RemoteEngine"]


class RemoteEngine:
    """What the front end knows of an engine that lives in the core: its kind (traces, build rows)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def close(self) -> None:
        """The core closes the real engine when the version is unloaded there."""


class RemoteDrift:
    """The drift monitor's face for the metrics endpoint: output, labels, and the core's snapshot."""

    def __init__(self, client: CoreLink, slot: VersionSlot, output: str, labels: list[str] | None) -> None:
        self._client = client
        self._slot = slot
        self.output = output
        self.labels = labels

    def snapshot(self) -> dict[str, Any]:
        snap = self._client.drift(self._slot)
        return snap if snap is not None else {"rows": 0, "reference_rows": 0}


class CoreScheduler:
    """The Scheduler's interface (submit, cancel, stop, pending, instance_count, statistics, drift, start),
    answered by the engine core: requests and results cross through the client's arenas."""

    def __init__(self, client: CoreLink, slot: VersionSlot, instances: int,
                 drift: dict[str, Any] | None = None) -> None:
        self._client = client
        self._slot = slot
        self._instances = instances
        self._local = ModelStatistics()  # what this front end counts itself: response cache hits and misses
        # the core's monitor counts; the metrics endpoint reads its snapshot through this stand-in
        self.drift: DriftMonitor | None = (
            RemoteDrift(client, slot, drift["output"], drift["labels"]) if drift else None  # type: ignore[assignment]
        )

    def start(self) -> None:
        """The core started the real scheduler when it loaded the version."""

    def stop(self, timeout: float | None = 30.0) -> None:
        self._client.unload(self._slot, timeout)

    def submit(self, request: InferRequest) -> None:
        slot = self._slot
        if slot.released:  # as the Scheduler answers once stop() began: at once, so a rollout can move it on
            self._local.record_failures([request], time.monotonic_ns(), "OTHER")
            raise RetiredError(f"model '{slot.name}' version {slot.version} is unloading")
        self._client.submit(slot, request)

    def cancel(self, request: InferRequest) -> bool:
        return self._client.cancel(request)

    @property
    def pending(self) -> int:
        return self._slot.pending

    @property
    def instance_count(self) -> int:
        return self._instances

    @property
    def statistics(self) -> ModelStatistics:
        return RemoteStatistics(self._local, self._fetch)

    def _fetch(self) -> dict[str, Any] | None:
        return self._client.statistics(self._slot)

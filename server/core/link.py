"""What a version's proxies need from the engine core client, as a leaf (no import back into client.py).

A ``VersionSlot`` is one version as the front end knows it in the core; its handle changes when a
restarted core loads the version again, and the proxies (proxy.py) follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..request import InferRequest

__all__ = ["CoreLink", "VersionSlot"]


@dataclass
class VersionSlot:
    """One version loaded in the core; ``handle`` changes when a restarted core loads it again (0: not loaded)."""

    name: str
    version: int
    load_args: dict[str, Any]
    handle: int
    inputs: dict[str, int]
    outputs: list[str]
    output_index: dict[str, int]
    pending: int = 0
    released: bool = False


class CoreLink(Protocol):
    """The calls a proxy makes; EngineCoreClient (client.py) provides them."""

    def submit(self, slot: VersionSlot, request: InferRequest) -> None: ...

    def cancel(self, request: InferRequest) -> bool: ...

    def unload(self, slot: VersionSlot, timeout: float | None) -> None: ...

    def statistics(self, slot: VersionSlot) -> dict[str, Any] | None: ...

    def drift(self, slot: VersionSlot) -> dict[str, Any] | None: ...

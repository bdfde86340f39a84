"""Model versions loaded through the engine core: the registry's loader, unload, statistics, reload on restart.

A version is known to the front end as a ``VersionSlot`` (link.py); its handle changes when a
restarted core loads the version again, and the proxies (proxy.py) follow it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, cast

from tensorgate.clients.pb import model_config_pb2 as mc

from ..errors import UnavailableError
from ..model import ModelState, ModelVersion, set_tensors
from ..telemetry.logs import model_state
from .link import CoreLink, VersionSlot
from .proxy import CoreScheduler, RemoteEngine

__all__ = ["CoreVersions"]

log = logging.getLogger("tensorgate.core")


class CoreVersions:
    """The version half of EngineCoreClient (client.py): it supplies ``_call``, ``_lock`` and ``_slots``."""

    _lock: threading.Lock
    _slots: list[VersionSlot]

    def _call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        raise NotImplementedError

    def load_version(self, name: str, version: int, model_file: Path, given: mc.ModelConfig, *,
                     max_batch_size_given: bool, engine_settings: Any = None, progress: Any = None) -> ModelVersion:
        """Load one version in the core; the returned ModelVersion is READY or failed with its reason. Never raises."""
        mv = ModelVersion(name, version, model_file.parent.parent)
        log.info("model %s version %d LOADING", name, version, extra=model_state(name, version, "LOADING"))
        args = {"name": name, "version": version, "model_file": str(model_file),
                "config": given.SerializeToString(deterministic=True), "max_batch_size_given": max_batch_size_given,
                "engine_settings": engine_settings}
        reply: dict[str, Any] = {}
        try:
            reply = self._call("load", **args)
            if not reply["ready"]:
                raise RuntimeError(reply["reason"])
            set_tensors(mv, mc.ModelConfig.FromString(reply["config"]))
        except Exception as exc:
            reason = str(exc) if not isinstance(exc, UnavailableError) else f"engine core: {exc}"
            mv.fail(reason)
            if reply.get("ready"):  # loaded in the core, refused here (a label file): give it back
                self._unload(reply["handle"], 0)
            log.error("model %s version %d UNAVAILABLE: %s", name, version, reason,
                      extra=model_state(name, version, "UNAVAILABLE", reason))
            return mv
        outputs = list(mv.outputs)
        slot = VersionSlot(name, version, args, reply["handle"], {n: i for i, n in enumerate(mv.inputs)}, outputs,
                           {n: i for i, n in enumerate(outputs)})
        with self._lock:
            self._slots.append(slot)
        mv.engine_kind = reply["engine_kind"]
        mv.cache_hit = reply["cache_hit"]
        mv.warmup_runs = reply["warmup_runs"]
        mv.accuracy = reply["accuracy"]
        mv.input_guard = reply["input_guard"]
        mv.engine = RemoteEngine(mv.engine_kind)  # type: ignore[assignment]
        client = cast("CoreLink", self)
        mv.scheduler = CoreScheduler(client, slot, reply["instances"], reply["drift"])  # type: ignore[assignment]
        mv.state = ModelState.READY
        log.info("model %s version %d READY: %d instance(s) on %s in the engine core, max_batch_size %d", name,
                 version, reply["instances"], mv.engine_kind, mv.max_batch_size,
                 extra=model_state(name, version, "READY"))
        return mv

    def unload(self, slot: VersionSlot, timeout: float | None) -> None:
        with self._lock:
            slot.released = True
            if slot in self._slots:
                self._slots.remove(slot)
        if slot.handle:
            self._unload(slot.handle, timeout)

    def _unload(self, handle: int, timeout: float | None) -> None:
        try:
            self._call("unload", None, handle=handle, wait=timeout)
        except (UnavailableError, RuntimeError) as exc:  # a dead core has nothing left to unload
            log.debug("unload in the engine core: %s", exc)

    def statistics(self, slot: VersionSlot) -> dict[str, Any] | None:
        try:
            reply = self._call("stats", 10, handle=slot.handle) if slot.handle else None
        except (UnavailableError, RuntimeError):
            return None
        return None if reply is None else dict(reply["stats"])

    def drift(self, slot: VersionSlot) -> dict[str, Any] | None:
        try:
            reply: dict[str, Any] | None = self._call("drift", 10, handle=slot.handle) if slot.handle else None
        except (UnavailableError, RuntimeError):
            return None
        return reply

    def _reload(self) -> None:
        """Load every version the dead core had into the new one; their proxies follow the new handles."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.handle = 0
            try:
                reply = self._call("load", **slot.load_args)
            except Exception as exc:
                log.error("model %s version %d: reload in the restarted engine core failed: %s",
                          slot.name, slot.version, exc)
                continue
            if not reply["ready"]:
                log.error("model %s version %d: reload in the restarted engine core failed: %s",
                          slot.name, slot.version, reply["reason"])
            elif slot.released:
                self._unload(reply["handle"], 0)
            else:
                slot.handle = reply["handle"]
        log.info("engine core restarted (%d version(s) loaded again)", sum(1 for s in slots if s.handle))

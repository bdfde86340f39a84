"""The models the server knows: their serving version sets, states and readiness.

Each model has one *serving set* (version number -> ModelVersion), replaced
atomically: a load builds the new set beside the old one (engine, accuracy
gate, warm-up) while the old keeps answering, then swaps the dict in one
assignment, so "latest" moves to the new version only once it is READY. The
versions that leave stop taking requests and are unloaded in the background
once their queued and running requests finish (bounded by ``unload_timeout``;
what is still queued then fails with UNAVAILABLE). A new set with a version
that fails to load is thrown away and the old set keeps serving; the error
says why. A model that failed before its versions is UNAVAILABLE with its
reason (RepositoryIndex and the log show it) while every other model serves.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_factory import EngineSettings
from .ensemble import load_ensemble
from .ensemble_plan import is_ensemble
from .errors import InvalidArgumentError, NotFoundError, UnavailableError
from .model import load_model_version
from .model_version import ModelState, ModelVersion
from .repository import ModelSource, scan_repository
from .request import InferRequest
from .response_cache import ResponseCache, submit_request

__all__ = ["IndexEntry", "LoadFailedError", "ModelRegistry"]

log = logging.getLogger("tensorgate.registry")

Cleanup = Callable[[], None]
VersionLoader = Callable[..., ModelVersion]  # load_model_version's signature
_VERSION = re.compile("[0-9]+")  # ASCII digits only: str.isdigit() and int() take others


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class LoadFailedError(Exception):
    """A load did not produce a serving set; the message names the model and every reason."""


class _ModelEntry:
    """A model's source, its serving set, and what is loading or leaving beside it."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.versions: dict[int, ModelVersion] = {}  # the serving set; replaced, never mutated
        self.loading: set[int] = set()  # versions being built beside the serving set
        self.gone: dict[int, ModelVersion] = {}  # left the serving set: UNLOADING, unloaded or failed
        self.error: str | None = source.error
        self.cleanup: Cleanup | None = None  # removes the private copy of a load's file overrides


class ModelRegistry:
    """All models of one repository.

    Args:
        repository: the model repository folder.
        engine_settings: engine cache settings.
        strict_config: config fields without effect are load errors (--strict-model-config).
        unload_timeout: how long an unloading version's in-flight requests may take.
    """

    def __init__(
        self,
        repository: Path,
        engine_settings: EngineSettings | None = None,
        strict_config: bool = False,
        unload_timeout: float = 30.0,
        response_cache: ResponseCache | None = None,
        loader: VersionLoader | None = None,
    ) -> None:
        self.repository = repository
        # builds one version: in this process, or in the engine core process (--engine-core process)
        self.load_version: VersionLoader = loader or load_model_version
        self.engine_settings = engine_settings or EngineSettings()
        self.response_cache = response_cache  # --cache-config; used by models with response_cache enabled
        self.strict_config = strict_config
        self.unload_timeout = unload_timeout
        self._models: dict[str, _ModelEntry] = {}
        self._lock = threading.Lock()
        self._changes = threading.Lock()  # one load or unload at a time (Triton serializes them too)
        self._retiring: set[threading.Thread] = set()

    # ---- loading -------------------------------------------------------------

    def load_all(self, names: set[str] | None = None) -> None:
        """Scan the repository and load every model (or the named ones) the policies select."""
        sources = [s for s in scan_repository(self.repository, self.strict_config)
                   if names is None or s.name in names]
        # ensembles last, each after the ensembles it composes (Triton loads dependencies first)
        order = [s for s in sources if not is_ensemble(s.config)]
        waiting = [s for s in sources if is_ensemble(s.config)]
        while waiting:
            pending = {s.name for s in waiting}
            ready = [s for s in waiting
                     if not {step.model_name for step in s.config.ensemble_scheduling.step} & pending]
            order += ready or waiting  # a cycle: load them anyway, each fails with its reason
            waiting = [s for s in waiting if s not in (ready or waiting)]
        for source in order:
            try:
                self.load(source)
            except LoadFailedError:
                pass  # logged; the model is UNAVAILABLE with its reason, the others serve

    def submit(self, request: InferRequest) -> None:
        """Queue a prepared request on its model, through the response cache when the model has one."""
        submit_request(request, self.response_cache)

    def load(self, source: ModelSource, cleanup: Cleanup | None = None) -> list[ModelVersion]:
        """Build `source`'s version set beside the serving one and switch to it atomically.

        Raises:
            LoadFailedError: the model (or one of its versions) failed; a serving set stays.
        """
        with self._changes:
            return self._load(source, cleanup)

    def _load(self, source: ModelSource, cleanup: Cleanup | None) -> list[ModelVersion]:
        with self._lock:
            entry = self._models.get(source.name)
            if entry is None:
                entry = self._models[source.name] = _ModelEntry(source)
        for warning in source.warnings:
            log.warning("model %s: config.pbtxt: %s", source.name, warning)
        serving = entry.versions
        if source.error:
            _run(cleanup)
            log.error("model %s UNAVAILABLE: %s", source.name, source.error)
            if not serving:
                entry.source, entry.error = source, source.error
            raise LoadFailedError(f"failed to load '{source.name}': {source.error}")
        built: dict[int, ModelVersion] = {}
        entry.loading = set(source.versions)
        try:
            for version, model_file in sorted(source.versions.items()):
                if is_ensemble(source.config):
                    built[version] = load_ensemble(
                        source.name, version, model_file.parent, source.config, self.resolve, self.submit
                    )
                    entry.loading.discard(version)
                    continue
                built[version] = self.load_version(
                    source.name, version, model_file, source.config,
                    max_batch_size_given=source.max_batch_size_given, engine_settings=self.engine_settings,
                )
                entry.loading.discard(version)
        finally:
            entry.loading = set()
        if self.response_cache is None and any(mv.response_cache for mv in built.values()):
            log.warning("model %s enables response_cache but the server has no cache (--cache-config "
                        "local,size=BYTES): every request is computed", source.name)
        failed = [mv for mv in built.values() if not mv.ready]
        reasons = "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
        if failed and serving:
            # a rollout is all or nothing: the old set keeps serving
            for mv in built.values():
                mv.stop(0)
            for mv in failed:
                if mv.version not in serving:
                    entry.gone[mv.version] = mv
            _run(cleanup)
            raise LoadFailedError(
                f"failed to load '{source.name}': {reasons}; versions {sorted(serving)} keep serving"
            )
        old, old_cleanup = serving, entry.cleanup
        entry.source, entry.error, entry.cleanup = source, None, cleanup
        entry.versions = built  # the switch: one assignment
        for number in built:
            entry.gone.pop(number, None)
        leaving = [mv for mv in old.values() if mv not in built.values()]
        self._retire(entry, leaving, old_cleanup)
        if failed:  # a first load keeps what loaded, as a start does
            raise LoadFailedError(f"failed to load '{source.name}': {reasons}")
        return list(built.values())

    def _retire(self, entry: _ModelEntry, leaving: list[ModelVersion], cleanup: Cleanup | None) -> None:
        """Unload versions that left the serving set once their requests finish, off the caller's thread."""
        for mv in leaving:
            if mv.version not in entry.versions:
                entry.gone[mv.version] = mv
            if mv.ready:
                mv.state = ModelState.UNLOADING
        if not leaving:
            _run(cleanup)
            return

        def retire() -> None:
            for mv in leaving:
                mv.stop(self.unload_timeout)
            _run(cleanup)
            _trim_heap()

        thread = threading.Thread(target=retire, name=f"tg-retire-{entry.source.name}"[:40], daemon=True)
        with self._lock:
            self._retiring = {t for t in self._retiring if t.is_alive()} | {thread}
        thread.start()

    def unload(self, name: str) -> bool:
        """Take a model out of service: new requests are refused, in-flight ones finish (bounded).

        Returns False when the model was not loaded (nothing to do).
        """
        with self._changes:
            entry = self._models.get(name)
            if entry is None or (not entry.versions and not entry.error):
                return False
            leaving = list(entry.versions.values())
            entry.versions = {}
            entry.error = None
            for mv in leaving:
                entry.gone[mv.version] = mv
                if mv.ready:
                    mv.state = ModelState.UNLOADING
            for mv in leaving:
                mv.stop(self.unload_timeout)
            cleanup, entry.cleanup = entry.cleanup, None
            _run(cleanup)
            _trim_heap()
            log.info("model %s unloaded", name)
            return True

    def wait_retired(self, timeout: float | None = None) -> None:
        """Wait for background unloads of replaced versions (tests, shutdown)."""
        with self._lock:
            threads = list(self._retiring)
        for thread in threads:
            thread.join(timeout)

    def stop(self) -> None:
        """Drain and unload every model (in-flight requests finish first)."""
        with self._lock:
            entries = list(self._models.values())
        # ensembles first: their in-flight requests finish while the composing models still serve
        entries.sort(key=lambda e: not is_ensemble(e.source.config))
        for entry in entries:
            for mv in entry.versions.values():
                mv.stop()
            _run(entry.cleanup)
            entry.cleanup = None
        self.wait_retired()

    # ---- lookups ---------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def loaded_names(self) -> list[str]:
        """Models with a serving set (or a failed one), not unloaded."""
        return [n for n in self.names() if self._models[n].versions or self._models[n].error]

    def _entry(self, name: str) -> _ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise NotFoundError(f"unknown model '{name}'")
        return entry

    def versions(self, name: str) -> list[ModelVersion]:
        """Every serving version of a model, ready or not, oldest first."""
        served = self._entry(name).versions
        return [served[v] for v in sorted(served)]

    def find(self, name: str, version: str = "") -> ModelVersion:
        """The model version a request names, ready or not.

        An empty version picks the newest ready version (else the newest one).
        """
        entry = self._entry(name)
        served = entry.versions  # one read: a switch replaces the dict, never changes it
        if not version:
            ready = [v for v in sorted(served) if served[v].ready]
            if not ready:
                # Triton: a model with no available version is unknown unless a version is named.
                # Load errors may carry paths and engine internals: RepositoryIndex shows them, not this.
                raise NotFoundError(
                    f"model '{name}' has no available versions; RepositoryIndex gives the reason"
                )
            return served[ready[-1]]
        if entry.error and not served:
            raise UnavailableError(f"model '{name}' is not ready; RepositoryIndex gives the reason")
        if not _VERSION.fullmatch(version):
            # int() would take " 1", "+1" and "1_0" as versions; Triton refuses what is not an integer
            shown = version if len(version) <= 32 else version[:32] + "..."
            raise InvalidArgumentError(
                f"model '{name}': invalid version {shown!r}; a version is a decimal integer such as '1'"
            )
        mv = served.get(int(version))
        if mv is None:
            raise NotFoundError(
                f"model '{name}' has no version {version}; served versions: {sorted(served)}"
            )
        return mv

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version to run a request on."""
        mv = self.find(name, version)
        if not mv.ready:
            raise UnavailableError(
                f"model '{name}' version {mv.version} is not ready ({mv.state.value}); "
                "RepositoryIndex gives the reason"
            )
        return mv

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """One entry per version: serving, loading beside them, or leaving (a model-level failure: one, "")."""
        out: list[IndexEntry] = []
        for name in self.names():
            entry = self._models[name]
            served, loading, gone = entry.versions, set(entry.loading), dict(entry.gone)
            rows: dict[int, IndexEntry] = {}
            for number, mv in gone.items():
                rows[number] = IndexEntry(name, mv.version_str, mv.state.value, mv.reason)
            for number in loading:
                rows[number] = IndexEntry(name, str(number), ModelState.LOADING.value, "")
            for number, mv in served.items():
                if number in loading and mv.ready:
                    continue  # a new build of a serving version: LOADING says more
                rows[number] = IndexEntry(name, mv.version_str, mv.state.value, mv.reason)
            if entry.error and not served and not loading:
                rows = {-1: IndexEntry(name, "", ModelState.UNAVAILABLE.value, entry.error)}
            for number in sorted(rows):
                row = rows[number]
                if not ready_only or row.state == ModelState.READY.value:
                    out.append(row)
        return out

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self.versions(name)]

    @property
    def loading(self) -> bool:
        return any(mv.state is ModelState.LOADING for mv in self.all_versions())

    @property
    def all_ready(self) -> bool:
        return all(not e.error for e in self._models.values()) and all(
            mv.ready for mv in self.all_versions()
        )


def _trim_heap() -> None:
    """Free what unloaded versions held, then give it back to the OS (glibc keeps it in its arenas otherwise).

    A version's scheduler and model refer to each other, so without a collection the engine's buffers
    would wait for the next full garbage collection.
    """
    global _malloc_trim
    gc.collect()
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to trim
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _run(cleanup: Cleanup | None) -> None:
    if cleanup is not None:
        try:
            cleanup()
        except Exception:  # a temp folder that will not go must not fail a load or unload
            log.warning("removing a load's temporary files failed", exc_info=True)

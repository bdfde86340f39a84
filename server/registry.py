"""The models the server knows: their versions, states and readiness.

Loads every model of the repository at start. A model that fails to load is
UNAVAILABLE with its reason (RepositoryIndex and the log show it) while every
other model keeps serving. Resolving a name and version for a request raises
NotFoundError or UnavailableError, as Triton answers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .engine_factory import EngineSettings
from .ensemble import load_ensemble
from .ensemble_plan import is_ensemble
from .errors import NotFoundError, UnavailableError
from .model import ModelState, ModelVersion, load_model_version
from .repository import ModelSource, scan_repository
from .request import InferRequest
from .response_cache import ResponseCache, submit_request

__all__ = ["IndexEntry", "ModelRegistry"]

log = logging.getLogger("tensorgate.registry")


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class _ModelEntry:
    """A model's source and its loaded versions."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.versions: dict[int, ModelVersion] = {}

    @property
    def error(self) -> str | None:
        return self.source.error


class ModelRegistry:
    """All models of one repository."""

    def __init__(
        self,
        repository: Path,
        engine_settings: EngineSettings | None = None,
        response_cache: ResponseCache | None = None,
    ) -> None:
        self.repository = repository
        self.engine_settings = engine_settings or EngineSettings()
        self.response_cache = response_cache  # --cache-config; used by models with response_cache enabled
        self._models: dict[str, _ModelEntry] = {}
        self._lock = threading.Lock()

    # ---- loading -------------------------------------------------------------

    def load_all(self) -> None:
        """Scan the repository and load every model version the policies select."""
        sources = scan_repository(self.repository)
        # ensembles last, each after the ensembles it composes (Triton loads dependencies first)
        for source in [s for s in sources if not is_ensemble(s.config)]:
            self._load(source)
        waiting = [s for s in sources if is_ensemble(s.config)]
        while waiting:
            pending = {s.name for s in waiting}
            ready = [s for s in waiting
                     if not {step.model_name for step in s.config.ensemble_scheduling.step} & pending]
            for source in ready or waiting:  # a cycle: load them anyway, each fails with its reason
                self._load(source)
            waiting = [s for s in waiting if s not in (ready or waiting)]

    def submit(self, request: InferRequest) -> None:
        """Queue a prepared request on its model, through the response cache when the model has one."""
        submit_request(request, self.response_cache)

    def _load(self, source: ModelSource) -> None:
        entry = _ModelEntry(source)
        with self._lock:
            self._models[source.name] = entry
        if source.error:
            log.error("model %s UNAVAILABLE: %s", source.name, source.error)
            return
        for version, model_file in sorted(source.versions.items()):
            if is_ensemble(source.config):
                entry.versions[version] = load_ensemble(
                    source.name, version, model_file.parent, source.config, self.resolve, self.submit
                )
                continue
            entry.versions[version] = load_model_version(
                source.name,
                version,
                model_file,
                source.config,
                max_batch_size_given=source.max_batch_size_given,
                engine_settings=self.engine_settings,
            )
        if self.response_cache is None and any(mv.response_cache for mv in entry.versions.values()):
            log.warning("model %s enables response_cache but the server has no cache (--cache-config "
                        "local,size=BYTES): every request is computed", source.name)

    def stop(self) -> None:
        """Drain and unload every model (in-flight requests finish first)."""
        with self._lock:
            entries = list(self._models.values())
        # ensembles first: their in-flight requests finish while the composing models still serve
        entries.sort(key=lambda e: not is_ensemble(e.source.config))
        for entry in entries:
            for mv in entry.versions.values():
                mv.stop()

    # ---- lookups ---------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def _entry(self, name: str) -> _ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise NotFoundError(f"unknown model '{name}'")
        return entry

    def versions(self, name: str) -> list[ModelVersion]:
        """Every loaded version of a model, ready or not, oldest first."""
        entry = self._entry(name)
        return [entry.versions[v] for v in sorted(entry.versions)]

    def find(self, name: str, version: str = "") -> ModelVersion:
        """The model version a request names, ready or not.

        An empty version picks the newest ready version (else the newest one).
        """
        entry = self._entry(name)
        if not version:
            ready = [v for v in sorted(entry.versions) if entry.versions[v].ready]
            if not ready:
                # Triton: a model with no available version is unknown unless a version is named.
                # Load errors may carry paths and engine internals: RepositoryIndex shows them, not this.
                raise NotFoundError(
                    f"model '{name}' has no available versions; RepositoryIndex gives the reason"
                )
            return entry.versions[ready[-1]]
        if entry.error and not entry.versions:
            raise UnavailableError(f"model '{name}' is not ready; RepositoryIndex gives the reason")
        try:
            number = int(version)
        except ValueError:
            raise NotFoundError(f"model '{name}' has no version '{version}'") from None
        mv = entry.versions.get(number)
        if mv is None:
            raise NotFoundError(
                f"model '{name}' has no version {version}; served versions: {sorted(entry.versions)}"
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
        """One entry per model version (a model that failed before its versions: one, version "")."""
        out: list[IndexEntry] = []
        for name in self.names():
            entry = self._models[name]
            if entry.error and not entry.versions:
                if not ready_only:
                    out.append(IndexEntry(name, "", ModelState.UNAVAILABLE.value, entry.error))
                continue
            for number in sorted(entry.versions):
                mv = entry.versions[number]
                if ready_only and not mv.ready:
                    continue
                out.append(IndexEntry(name, mv.version_str, mv.state.value, mv.reason))
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

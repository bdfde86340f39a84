"""The models the server knows: their versions, states and readiness.

Loads every model of the repository at start. A model that fails to load is
UNAVAILABLE with its reason (RepositoryIndex and the log show it) while every
other model keeps serving. Resolving a name and version for a request raises
NotFoundError or UnavailableError, as Triton answers.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .engine_factory import EngineSettings
from .errors import InvalidArgumentError, NotFoundError, UnavailableError
from .model import ModelState, ModelVersion, load_model_version
from .repository import ModelSource, scan_repository

__all__ = ["IndexEntry", "ModelRegistry"]

log = logging.getLogger("tensorgate.registry")

_VERSION = re.compile("[0-9]+")  # ASCII digits only: str.isdigit() and int() take others


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
    ) -> None:
        self.repository = repository
        self.engine_settings = engine_settings or EngineSettings()
        self._models: dict[str, _ModelEntry] = {}
        self._lock = threading.Lock()

    # ---- loading -------------------------------------------------------------

    def load_all(self) -> None:
        """Scan the repository and load every model version the policies select."""
        for source in scan_repository(self.repository):
            self._load(source)

    def _load(self, source: ModelSource) -> None:
        entry = _ModelEntry(source)
        with self._lock:
            self._models[source.name] = entry
        if source.error:
            log.error("model %s UNAVAILABLE: %s", source.name, source.error)
            return
        for version, model_file in sorted(source.versions.items()):
            entry.versions[version] = load_model_version(
                source.name,
                version,
                model_file,
                source.config,
                max_batch_size_given=source.max_batch_size_given,
                engine_settings=self.engine_settings,
            )

    def stop(self) -> None:
        """Drain and unload every model (in-flight requests finish first)."""
        with self._lock:
            entries = list(self._models.values())
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
        if not _VERSION.fullmatch(version):
            # int() would take " 1", "+1" and "1_0" as versions; Triton refuses what is not an integer
            shown = version if len(version) <= 32 else version[:32] + "..."
            raise InvalidArgumentError(
                f"model '{name}': invalid version {shown!r}; a version is a decimal integer such as '1'"
            )
        number = int(version)
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

"""Model control: Triton's modes (none, poll, explicit), load, unload and the repository index.

Transport-neutral: the gRPC servicers (both flavours) and an HTTP front end
call these methods with plain values and get ServerError on failure.

* ``none``: every model loads at start; RepositoryModelLoad/Unload answer
  UNAVAILABLE with Triton's message.
* ``poll``: every model loads at start; a thread rescans the repository every
  ``--repository-poll-secs`` and loads added or changed models (a zero-downtime
  rollout) and unloads removed ones; Load/Unload answer as in ``none``.
* ``explicit``: only ``--load-model`` names (``*``: all) load at start; Load
  and Unload work, with Triton's ``config`` and ``file:`` overrides.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .errors import InvalidArgumentError, NotFoundError, UnavailableError
from .names import check_model_name, is_valid_model_name
from .overrides import parse_overrides, stage_files
from .registry import IndexEntry, LoadFailedError, ModelRegistry
from .repository import ModelSource, complete_source, model_folders, read_model_source

__all__ = ["CONTROL_MODES", "DEFAULT_LOAD_MAX_BYTES", "ModelControl"]

log = logging.getLogger("tensorgate.lifecycle")

CONTROL_MODES = ("none", "poll", "explicit")
DEFAULT_LOAD_MAX_BYTES = 1 << 30
# Triton's words (model_repository_manager.cc), which Triton's clients and scripts match on
_NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"
_MAX_FINGERPRINT_FILES = 10_000
_T = TypeVar("_T")


def _fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a model's files change: (path, size, mtime) of every file, bounded."""
    rows = []
    for index, path in enumerate(sorted(model_dir.rglob("*"))):
        if index >= _MAX_FINGERPRINT_FILES:
            break
        try:
            stat = path.stat()
        except OSError:
            continue
        rows.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(rows)


class ModelControl:
    """Loads, unloads and polls one registry's repository in one of Triton's control modes.

    Args:
        registry: the models.
        mode: none, poll or explicit.
        startup_models: explicit mode: the models to load at start ("*": all).
        poll_secs: poll mode: seconds between repository scans.
        load_max_bytes: the most file-override bytes one load request may carry.
    """

    def __init__(self, registry: ModelRegistry, mode: str = "none", startup_models: Sequence[str] = (),
                 poll_secs: float = 15.0, load_max_bytes: int = DEFAULT_LOAD_MAX_BYTES) -> None:
        if mode not in CONTROL_MODES:
            raise ValueError(f"unknown model control mode '{mode}'; expected one of {CONTROL_MODES}")
        if mode != "explicit" and startup_models:
            raise ValueError("--load-model needs --model-control-mode explicit")
        for name in startup_models:
            if name != "*":
                check_model_name(name)
        self.registry = registry
        self.mode = mode
        self.startup_models = tuple(startup_models)
        self.poll_secs = poll_secs
        self.load_max_bytes = load_max_bytes
        self._fingerprints: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        # every load and unload runs on this one thread: engines are built and freed in one malloc arena
        # (glibc gives each thread its own), so load/unload cycles do not spread memory over many arenas
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tg-model-control",
                                          initializer=self._mark_worker)
        self._worker_ident: int | None = None

    def _mark_worker(self) -> None:
        self._worker_ident = threading.get_ident()

    def _on_worker(self, fn: Callable[[], _T]) -> _T:
        if threading.get_ident() == self._worker_ident:  # already there (start's --load-model loads)
            return fn()
        return self._worker.submit(fn).result()

    # ---- start and stop -------------------------------------------------------------

    def start(self) -> None:
        """Load what the mode loads at start (blocking), then start polling in poll mode."""
        self._on_worker(self._start)
        if self.mode == "poll" and self.poll_secs > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="tg-repository-poll", daemon=True)
            self._poller.start()

    def _start(self) -> None:
        repository = self.registry.repository
        if self.mode != "explicit" or "*" in self.startup_models:
            self._fingerprints = {p.name: _fingerprint(p) for p in model_folders(repository)}
            self.registry.load_all()
        else:
            for name in self.startup_models:
                try:
                    self.load(name, {}, startup=True)
                except (LoadFailedError, InvalidArgumentError, NotFoundError) as exc:
                    log.error("--load-model %s: %s", name, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(self.poll_secs + 60)
            self._poller = None
        self._worker.shutdown(wait=True)

    # ---- the RPCs ---------------------------------------------------------------------

    def _allowed(self) -> None:
        if self.mode != "explicit":
            raise UnavailableError(_NOT_ALLOWED)

    def load(self, name: str, parameters: Mapping[str, object], startup: bool = False) -> None:
        """RepositoryModelLoad: (re)load a model with zero downtime; raises ServerError.

        Args:
            name: the model; validated before it touches a path.
            parameters: ``config`` (JSON ModelConfig) and ``file:<path>`` (bytes) overrides.
            startup: called by start() (explicit mode's --load-model), not by a client.
        """
        if not startup:
            self._allowed()
        check_model_name(name)
        overrides = parse_overrides(name, parameters, self.load_max_bytes)
        cleanup = None
        if overrides.files:
            staged = stage_files(name, overrides.files)
            model_dir, cleanup = staged.model_dir, staged.cleanup
        else:
            model_dir = self.registry.repository / name
            if not model_dir.is_dir():
                raise NotFoundError(f"failed to load '{name}': no model folder '{name}' in the model repository")
        try:
            if overrides.config is not None:
                config = overrides.config
                if not config.name:
                    config.name = name
                source = complete_source(
                    ModelSource(name, model_dir, config, max_batch_size_given=overrides.max_batch_size_given),
                    self.registry.strict_config,
                )
            else:
                source = read_model_source(model_dir, self.registry.strict_config)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise
        try:
            self._on_worker(lambda: self.registry.load(source, cleanup))
        except LoadFailedError as exc:
            raise InvalidArgumentError(str(exc)) from exc

    def unload(self, name: str, parameters: Mapping[str, object]) -> None:
        """RepositoryModelUnload: in-flight requests finish (bounded), then the model is gone.

        ``unload_dependents`` is accepted (bool) as Triton does; tensorgate has no ensembles, so no
        model depends on another.
        """
        self._allowed()
        check_model_name(name)
        for key, value in parameters.items():
            if key != "unload_dependents":
                raise InvalidArgumentError(f"unknown unload parameter {key[:120]!r}; expected 'unload_dependents'")
            if not isinstance(value, bool):
                raise InvalidArgumentError("unload parameter 'unload_dependents' must be a bool")
        self._on_worker(lambda: self.registry.unload(name))

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model with its versions' states; explicit mode also lists repository models not loaded."""
        entries = self.registry.index(ready_only)
        if self.mode == "explicit" and not ready_only:
            known = {e.name for e in entries}
            try:
                folders = [p.name for p in model_folders(self.registry.repository)]
            except FileNotFoundError:
                folders = []
            entries += [IndexEntry(n, "", "", "") for n in folders if n not in known]
            entries.sort(key=lambda e: e.name)
        return entries

    # ---- poll mode ---------------------------------------------------------------------

    def poll_once(self) -> None:
        """One repository scan: load added and changed models, unload removed ones."""
        try:
            folders = {p.name: p for p in model_folders(self.registry.repository)}
        except FileNotFoundError:
            log.error("model repository %s is gone; keeping the loaded models", self.registry.repository)
            return
        for name in self.registry.loaded_names():
            if name not in folders and is_valid_model_name(name):
                log.info("model %s left the repository: unloading", name)
                self._fingerprints.pop(name, None)
                self.registry.unload(name)
        for name, path in folders.items():
            fingerprint = _fingerprint(path)
            if self._fingerprints.get(name) == fingerprint and name in self.registry.loaded_names():
                continue
            self._fingerprints[name] = fingerprint
            log.info("model %s changed in the repository: loading", name)
            try:
                self.registry.load(read_model_source(path, self.registry.strict_config))
            except LoadFailedError as exc:
                log.error("%s", exc)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_secs):
            try:
                self._on_worker(self.poll_once)
            except Exception:  # the poller must outlive one bad scan
                log.exception("repository poll failed")

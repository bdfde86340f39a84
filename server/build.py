"""`tensorgate build`: build the artifacts and engines a repository asks for, ahead of time (the CI/CD step).

It runs the same ``engine_factory.prepare`` a server runs at load time, so what
it leaves in the engine cache is exactly what a server started afterwards with
the same ``--engine-cache-dir`` finds: every model then logs a cache hit and
starts without building. Each step gets a progress line; a summary table
follows; any failed build or refused accuracy gate makes the exit status 1.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_factory import EngineSettings, Prepared, prepare
from .ensemble_plan import is_ensemble
from .repository import ModelSource, scan_repository
from .tokenizer_model import is_tokenizer

__all__ = ["BuildRow", "build_repository", "run_build"]

log = logging.getLogger("tensorgate.build")


@dataclass(frozen=True)
class BuildRow:
    """One model version's outcome."""

    model: str
    version: str
    precision: str = ""
    device: str = ""
    seconds: float = 0.0
    accuracy: str = ""
    cache: str = ""
    key: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _row(name: str, version: int, prepared: Prepared, seconds: float) -> BuildRow:
    artifact = prepared.artifact
    acc = artifact.accuracy
    accuracy = ""
    if acc is not None:
        accuracy = f"cos {acc.min_cosine:.5f} max|err| {acc.max_abs_error:.3g}"
        if acc.top1_agreement is not None:
            accuracy += f" top1 {acc.top1_agreement:.3f}"
    if prepared.placement.device == "gpu":
        device = "gpu " + ",".join(str(g) for g in sorted(set(prepared.placement.instance_gpus)))
    else:
        device = prepared.engines[0].device if prepared.engines else "cpu (not cached)"
    keys = ",".join(e.key[:12] for e in prepared.engines) or artifact.key[:12]
    return BuildRow(name, str(version), artifact.spec.label, device, seconds, accuracy,
                    "hit" if prepared.cache_hit else "built", keys)


def build_repository(
    repository: Path, models: Sequence[str], settings: EngineSettings, console: Any | None = None
) -> list[BuildRow]:
    """Prepare every selected model version; never raises for a model's failure.

    Args:
        repository: the model repository.
        models: names to build (empty: all).
        settings: where the engine cache is.
        console: a rich Console for progress (None: no progress display).

    Returns:
        One row per model version (or per model that failed before its versions).
    """
    sources = scan_repository(repository)
    known = {s.name for s in sources}
    rows = [BuildRow(m, "-", error="no such model in the repository") for m in models if m not in known]
    selected = [s for s in sources if not models or s.name in models]
    if console is None:
        for source in selected:
            rows += _build_source(source, settings, None)
        return rows
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for source in selected:
            rows += _build_source(source, settings, progress)
    return rows


class _Steps:
    """One progress line per build step: the previous step's line completes when the next starts."""

    def __init__(self, progress: Any | None, label: str) -> None:
        self._progress = progress
        self._label = label
        self._task: Any = None

    def __call__(self, name: str) -> None:
        if self._progress is None:
            return
        self.finish()
        self._task = self._progress.add_task(f"{self._label}: {name}", total=None)

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=1, completed=1)
            self._task = None


def _build_source(source: ModelSource, settings: EngineSettings, progress: Any | None) -> list[BuildRow]:
    if source.error:
        return [BuildRow(source.name, "-", error=source.error)]
    if is_ensemble(source.config) or is_tokenizer(source.config):  # no engine file: nothing to build
        kind = "ensemble" if is_ensemble(source.config) else "tokenizer"
        return [BuildRow(source.name, str(v), precision="-", device=kind, cache="n/a") for v in sorted(source.versions)]
    rows = []
    for version, model_file in sorted(source.versions.items()):
        steps = _Steps(progress, f"{source.name} v{version}")
        steps("hashing the model, looking up the engine cache")
        start = time.monotonic()
        try:
            prepared = prepare(source.name, version, model_file, source.config, settings, steps)
            row = _row(source.name, version, prepared, time.monotonic() - start)
        except Exception as exc:  # report every model; the exit status says something failed
            log.debug("build of %s v%d failed", source.name, version, exc_info=True)
            row = BuildRow(source.name, str(version), seconds=time.monotonic() - start,
                           error=str(exc) or type(exc).__name__)
        steps("done" if row.ok else "FAILED")
        steps.finish()
        rows.append(row)
    return rows


def _table(rows: Sequence[BuildRow]) -> Any:
    from rich.table import Table

    table = Table(title="tensorgate build")
    for column in ("model", "version", "precision", "device", "build time", "accuracy vs fp32", "cache",
                   "cache key", "status"):
        table.add_column(column, overflow="fold")
    for r in rows:
        status = "ok" if r.ok else "[red]FAILED[/red]"
        table.add_row(r.model, r.version, r.precision, r.device, f"{r.seconds:.2f} s", r.accuracy, r.cache,
                      r.key, status)
    return table


def run_build(repository: Path, models: Sequence[str], cache_dir: Path, max_bytes: int) -> int:
    """The command: progress, summary table, exit status (0 all built and gated, 1 otherwise)."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        rows = build_repository(repository, models, EngineSettings(cache_dir, max_bytes), console)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(_table(rows))
    failed = [r for r in rows if not r.ok]
    for r in failed:
        out.print(f"[red]FAILED[/red] {r.model} version {r.version}: {r.error}", highlight=False, soft_wrap=True)
    hits = sum(1 for r in rows if r.ok and r.cache == "hit")
    print(f"{len(rows) - len(failed)} ready ({hits} from the cache), {len(failed)} failed; engine cache: {cache_dir}")
    return 1 if failed or not rows else 0

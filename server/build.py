"""`tensorgate build`: the CI gate. Load every model version exactly as `serve` would, then unload it.

It runs the server's own load path (``repository.read_model_source`` with the
config check, ``model.load_model_version``: engine build through the cache and
the accuracy gate, config completion against the model, instances, warm-up),
so a config that serve would refuse fails build with the same message, and
what it leaves in the engine cache is exactly what a server started afterwards
with the same ``--engine-cache-dir`` finds. Each step gets a progress line; a
summary table (or, with ``--json``, one JSON document) follows; any failure
makes the exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engine_factory import EngineSettings
from .ensemble_plan import is_ensemble
from .model import load_model_version
from .model_version import ModelVersion
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
    warnings: tuple[str, ...] = ()
    warmup_runs: int = 0

    @property
    def ok(self) -> bool:
        return not self.error


def _row(mv: ModelVersion, seconds: float, warnings: Sequence[str]) -> BuildRow:
    acc = mv.accuracy
    accuracy = ""
    if acc is not None:
        accuracy = f"cos {acc.min_cosine:.5f} max|err| {acc.max_abs_error:.3g}"
        if acc.top1_agreement is not None:
            accuracy += f" top1 {acc.top1_agreement:.3f}"
    parameters = mv.config.parameters
    precision = parameters["precision_artifact"].string_value if "precision_artifact" in parameters else ""
    keys = parameters["engine_cache_key"].string_value if "engine_cache_key" in parameters else ""
    keys = ",".join(k[:12] for k in keys.split(",") if k)
    # FP32 on the CPU is loaded as it is: nothing built, nothing cached
    cache = ("hit" if mv.cache_hit else "built") if keys else "not needed"
    return BuildRow(mv.name, mv.version_str, precision, mv.engine_kind, seconds, accuracy, cache, keys,
                    warnings=tuple(warnings), warmup_runs=mv.warmup_runs)


def _stored(mv: ModelVersion, cache_dir: Path | None) -> bool:
    """Whether every cache entry the version loaded lies in the cache folder (not in a scratch folder that goes
    when the process exits, as when the cache is read-only or full)."""
    parameters = mv.config.parameters
    keys = parameters["engine_cache_key"].string_value if "engine_cache_key" in parameters else ""
    if cache_dir is None or not keys:
        return True
    root = Path(cache_dir)
    # the parameter holds each key's first 16 characters; entries live at <cache>/<namespace>/<key>
    return all(any(path.is_dir() for path in root.glob(f"*/{key}*")) for key in keys.split(",") if key)


def build_repository(
    repository: Path, models: Sequence[str], settings: EngineSettings, console: Any | None = None,
    strict: bool = False,
) -> list[BuildRow]:
    """Prepare every selected model version; never raises for a model's failure.

    Args:
        repository: the model repository.
        models: names to build (empty: all).
        settings: where the engine cache is.
        console: a rich Console for progress (None: no progress display).
        strict: config fields without effect are errors (--strict-model-config), as serve would have them.

    Returns:
        One row per model version (or per model that failed before its versions).
    """
    sources = scan_repository(repository, strict)
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
        return [BuildRow(source.name, "-", error=source.error, warnings=tuple(source.warnings))]
    if is_ensemble(source.config) or is_tokenizer(source.config):  # no engine file: nothing to build
        kind = "ensemble" if is_ensemble(source.config) else "tokenizer"
        return [BuildRow(source.name, str(v), precision="-", device=kind, cache="n/a",
                         warnings=tuple(source.warnings)) for v in sorted(source.versions)]
    rows = []
    for version, model_file in sorted(source.versions.items()):
        steps = _Steps(progress, f"{source.name} v{version}")
        steps("hashing the model, looking up the engine cache")
        start = time.monotonic()
        mv = load_model_version(source.name, version, model_file, source.config,
                                max_batch_size_given=source.max_batch_size_given, engine_settings=settings,
                                progress=steps)
        try:
            if mv.ready:
                row = _row(mv, time.monotonic() - start, source.warnings)
                if not _stored(mv, settings.engine_cache_dir):
                    row = replace(row, error=f"built, but the engine cache {settings.engine_cache_dir} could not "
                                  "store it (the warning above says why): a server would build it again")
            else:
                row = BuildRow(source.name, str(version), seconds=time.monotonic() - start, error=mv.reason,
                               warnings=tuple(source.warnings))
        finally:
            mv.stop(0)  # built and checked; nothing is served
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


def run_build(repository: Path, models: Sequence[str], cache_dir: Path, max_bytes: int, strict: bool = False,
              as_json: bool = False) -> int:
    """The command: progress, summary table or JSON, exit status (0 all loaded and gated, 1 otherwise)."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        rows = build_repository(repository, models, EngineSettings(cache_dir, max_bytes), console, strict)
    except FileNotFoundError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "models": []}))
        else:
            console.print(f"[red]{exc}[/red]")
        return 2
    failed = [r for r in rows if not r.ok]
    hits = sum(1 for r in rows if r.ok and r.cache == "hit")
    status = 1 if failed or not rows else 0
    if as_json:
        document = {
            "ok": status == 0,
            "ready": len(rows) - len(failed),
            "from_cache": hits,
            "failed": len(failed),
            "engine_cache": str(cache_dir),
            "models": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows],
        }
        print(json.dumps(document, indent=2))
        return status
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(_table(rows))
    for r in rows:
        for warning in r.warnings:
            out.print(f"[yellow]WARNING[/yellow] {r.model}: {warning}", highlight=False, soft_wrap=True)
    for r in failed:
        out.print(f"[red]FAILED[/red] {r.model} version {r.version}: {r.error}", highlight=False, soft_wrap=True)
    print(f"{len(rows) - len(failed)} ready ({hits} from the cache), {len(failed)} failed; engine cache: {cache_dir}")
    return status

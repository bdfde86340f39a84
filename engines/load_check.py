"""The load-time check: a cached artifact or engine is run against fp32 on a few held-back samples before it serves.

The cache's manifest proves that the bytes are those it lists, not that they
are good: whoever can write the cache can change a file and its sha256
together. So on every load that takes anything from the cache, the file that
will serve (the ONNX Runtime optimized graph on a CPU, the precision artifact
for a GPU plan) and model.onnx itself run on a few held-back samples (the
calibration hold-out, else the synthetic samples the build used), chosen at
random among them, and the model's accuracy gate judges the figures measured
now. It costs two ONNX Runtime sessions, made without graph optimisation (the
served graph is already optimized, and optimising the reference is most of a
session's start), and a few runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .accuracy import AccuracyGateError, AccuracyReport, AccuracyThresholds, check_gate, measure_accuracy
from .base import EngineLoadError
from .calibration import Feed, load_calibration
from .precision import HOLDOUT_EVERY, model_inputs, synthetic_feeds

__all__ = ["LOAD_CHECK_SAMPLES", "LoadCheck", "check_samples", "load_check"]

log = logging.getLogger("tensorgate.engines.load_check")

LOAD_CHECK_SAMPLES = 4
SOURCE = "load-check"


@dataclass(frozen=True)
class LoadCheck:
    """The outcome: the figures measured now (None when nothing could be compared) and why it failed, if it did."""

    report: AccuracyReport | None
    failure: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None


def _pick(feeds: Sequence[Feed], batching: bool, count: int, rng: np.random.Generator) -> list[Feed]:
    if not batching:
        chosen = rng.choice(len(feeds), size=min(count, len(feeds)), replace=False)
        return [feeds[int(i)] for i in sorted(chosen)]
    rows = [(f, r) for f, feed in enumerate(feeds) for r in range(int(next(iter(feed.values())).shape[0]))]
    picked = sorted(int(i) for i in rng.choice(len(rows), size=min(count, len(rows)), replace=False))
    out: list[Feed] = []
    for f in sorted({rows[i][0] for i in picked}):  # rows of one feed stay one batch (shared dims)
        keep = [rows[i][1] for i in picked if rows[i][0] == f]
        out.append({name: array[keep] for name, array in feeds[f].items()})
    return out


def check_samples(
    model_path: Path, batching: bool | None, count: int = LOAD_CHECK_SAMPLES
) -> tuple[list[Feed], bool]:
    """Up to ``count`` held-back samples for ``model_path`` (its folder's calibration hold-out, else synthetic).

    Returns:
        (feeds, batching): batching as given, or inferred from the model as the build infers it.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    inputs = model_inputs(model)
    del model
    if batching is None:
        batching = bool(inputs) and all(dims and dims[0] < 0 for _, _, dims in inputs)
    calibration = load_calibration(
        Path(model_path).parent.parent, {name: dt for name, dt, _ in inputs}, batching, HOLDOUT_EVERY
    )
    feeds = calibration.holdout if calibration is not None else synthetic_feeds(inputs, batching)
    if not feeds:
        return [], batching
    return _pick(feeds, batching, count, np.random.default_rng()), batching


def load_check(
    model_path: Path, target: Path, precision: str, thresholds: AccuracyThresholds, batching: bool | None
) -> LoadCheck:
    """Run ``target`` and the fp32 model on a few held-back samples and apply the gate to what is measured now.

    Args:
        model_path: the fp32 model.onnx (the reference; read from the repository, never from the cache).
        target: the file that will serve (cached optimized graph, or artifact).
        precision: "FP16" or "INT8", for the gate's message.
        thresholds: the model's gate.
        batching: the model batches along axis 0 (None: inferred).

    Returns:
        The figures and, when they miss the gate or the target cannot run, why.
    """
    feeds, batching = check_samples(model_path, batching)
    if not feeds:
        log.warning("%s: no held-back samples to check the cached %s entry with; it is served unchecked",
                    model_path, precision)
        return LoadCheck(None)
    try:
        report = measure_accuracy(model_path, target, feeds, batching, SOURCE, optimize=False)
    except AccuracyGateError as exc:
        return LoadCheck(None, str(exc))
    except EngineLoadError as exc:
        return LoadCheck(None, f"it does not run: {exc}")
    try:
        check_gate(report, thresholds, precision)
    except AccuracyGateError as exc:
        return LoadCheck(report, str(exc))
    return LoadCheck(report)

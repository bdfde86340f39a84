"""Output drift monitoring, opt-in per model: is what the model answers still what it answered on its
reference data?

Switched on by the model's config.pbtxt parameters (read into its plan, plan.py)::

    parameters { key: "drift_monitor" value: { string_value: "classifier" } }  # or "embedding", "auto", "true"
    parameters { key: "drift_output" value: { string_value: "logits" } }       # default: the first output
    parameters { key: "drift_window" value: { string_value: "5000" } }         # rows per PSI window

A classifier's rows count their top class (a histogram, labelled with the
output's label file when it has one); an embedding's rows feed a running mean
vector and a histogram of their L2 norms. The reference is the model's own
answers on its calibration data (``<model>/calibration/*.npz``, the INT8 data),
computed once at load; the population stability index (PSI) compares the last
one or two windows of live rows with it (under 0.1: stable; over 0.25: the
population has shifted). "auto" (or a true word: true/1/yes/on) means
classifier when the output has a label file, else embedding; a false word is
off, and any other value fails the load. The Prometheus families are in
drift_metrics.py. Work happens per executed batch on the scheduler's worker
thread (numpy, no per-row Python), and only for models that ask for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import LoadError
from ..parameters import quoted

if TYPE_CHECKING:
    from tensorgate.engines import EngineInstance

    from ..plan import DriftPlan

__all__ = ["DriftMonitor", "drift_monitor", "psi", "set_reference"]

log = logging.getLogger("tensorgate.telemetry.drift")

_EPS = 1e-4
_NORM_BINS = 10


def psi(expected: npt.NDArray[Any], actual: npt.NDArray[Any]) -> float:
    """Population stability index of two histograms over the same bins."""
    e = np.maximum(expected / max(float(expected.sum()), 1.0), _EPS)
    a = np.maximum(actual / max(float(actual.sum()), 1.0), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """One model output's live statistics and its reference."""

    def __init__(self, model: str, version: str, output: str, kind: str, width: int, window: int = 5000,
                 labels: list[str] | None = None, batching: bool = True) -> None:
        self.model, self.version, self.output, self.kind = model, version, output, kind
        self.width = width
        self.window = max(1, window)
        self.labels = labels
        self.batching = batching
        self.rows = 0
        self.class_counts = np.zeros(width if kind == "classifier" else 0, np.int64)
        self.sum = np.zeros(width if kind == "embedding" else 0, np.float64)
        self.norm_sum = 0.0
        self.reference_rows = 0
        self._ref_hist: npt.NDArray[np.float64] | None = None
        self._ref_mean: npt.NDArray[np.float64] | None = None
        self._edges: npt.NDArray[np.float64] | None = None
        self._current = np.zeros(0, np.float64)
        self._previous: npt.NDArray[np.float64] | None = None
        self._current_rows = 0
        self._lock = threading.Lock()
        self._failed = False

    def _rows(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return array.reshape(array.shape[0] if self.batching else 1, -1)

    def set_reference(self, outputs: Iterable[npt.NDArray[Any]]) -> None:
        """The model's answers on its reference data."""
        rows = np.concatenate([self._rows(np.asarray(o)) for o in outputs]).astype(np.float64)
        if not len(rows):
            return
        if self.kind == "classifier":
            self._ref_hist = np.bincount(rows.argmax(axis=1), minlength=self.width).astype(np.float64)
        else:
            norms = np.linalg.norm(rows, axis=1)
            self._edges = np.quantile(norms, np.linspace(0, 1, _NORM_BINS + 1)[1:-1])
            self._ref_hist = np.bincount(np.searchsorted(self._edges, norms), minlength=_NORM_BINS).astype(np.float64)
            self._ref_mean = rows.mean(axis=0)
        self.reference_rows = len(rows)
        self._current = np.zeros(len(self._ref_hist), np.float64)

    def observe(self, outputs: Mapping[str, npt.NDArray[Any]]) -> None:
        """One executed batch's outputs (the scheduler's hook). Never raises."""
        array = outputs.get(self.output)
        if array is None:
            return
        try:
            rows = self._rows(array)
            n = len(rows)
            if self.kind == "classifier":
                top = np.bincount(rows.argmax(axis=1), minlength=self.width)[: self.width]
                hist = top if self._ref_hist is not None else None
            else:
                as64 = rows.astype(np.float64)
                norms = np.linalg.norm(as64, axis=1)
                batch_sum, norm_sum = as64.sum(axis=0), float(norms.sum())
                hist = (np.bincount(np.searchsorted(self._edges, norms), minlength=_NORM_BINS)
                        if self._edges is not None else None)
            with self._lock:
                self.rows += n
                if self.kind == "classifier":
                    self.class_counts += top
                else:
                    self.sum += batch_sum
                    self.norm_sum += norm_sum
                if hist is not None:
                    self._current += hist
                    self._current_rows += n
                    if self._current_rows >= self.window:
                        self._previous, self._current_rows = self._current, 0
                        self._current = np.zeros_like(self._previous)
        except Exception:
            if not self._failed:
                self._failed = True
                log.warning("drift monitor of model %s output %s cannot read its outputs; it stops counting",
                            self.model, self.output, exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"rows": self.rows, "reference_rows": self.reference_rows}
            if self.kind == "classifier":
                out["classes"] = self.class_counts.copy()
            elif self.rows:
                mean = self.sum / self.rows
                out["norm_mean"] = self.norm_sum / self.rows
                out["mean_norm"] = float(np.linalg.norm(mean))
                if self._ref_mean is not None:
                    denom = float(np.linalg.norm(mean) * np.linalg.norm(self._ref_mean)) or 1.0
                    out["mean_cosine"] = float(mean @ self._ref_mean) / denom
            live = self._current if self._previous is None else self._current + self._previous
            if self._ref_hist is not None and live.sum() > 0:
                out["psi"] = psi(self._ref_hist, live)
            return out


def drift_monitor(plan: DriftPlan, model: str, version: str, outputs: Mapping[str, tuple[int, ...]],
                  labels: Mapping[str, list[str]], batching: bool) -> DriftMonitor:
    """The monitor a model's plan asks for; ``outputs``: each output's dims (batch axis excluded).

    Raises:
        LoadError: drift_output names no output of the model.
    """
    output = plan.output or next(iter(outputs), "")
    if output not in outputs:
        raise LoadError(f"parameter drift_output names '{quoted(output)}', which is not an output of the model "
                        f"({sorted(outputs)})")
    dims = outputs[output]
    width = int(np.prod([d for d in dims if d > 0])) if dims else 1
    output_labels = labels.get(output)
    kind = plan.kind if plan.kind != "auto" else ("classifier" if output_labels else "embedding")
    return DriftMonitor(model, version, output, kind, width, plan.window, output_labels, batching)


def set_reference(monitor: DriftMonitor, instance: EngineInstance, model_dir: Path,
                  dtypes: Mapping[str, np.dtype[Any]], max_batch_size: int) -> None:
    """The monitor's reference: the model's answers on its calibration data. Never raises (logged instead)."""
    from tensorgate.engines.calibration import load_calibration

    batching = max_batch_size > 0
    try:
        calibration = load_calibration(model_dir, dict(dtypes), batching)
        if calibration is None:
            log.info("model %s: drift monitor has no reference (no calibration/*.npz); PSI is not reported",
                     monitor.model)
            return
        outputs = []
        step = max_batch_size or 1
        for feed in calibration.all_feeds():
            rows = len(next(iter(feed.values()))) if batching else 1
            for start in range(0, rows, step if batching else 1):
                part = {k: v[start:start + step] for k, v in feed.items()} if batching else feed
                outputs.append(instance.run(part, [monitor.output])[monitor.output])
        monitor.set_reference(outputs)
        log.info("model %s: drift monitor (%s, output %s) has a reference of %d rows",
                 monitor.model, monitor.kind, monitor.output, monitor.reference_rows)
    except Exception as exc:
        log.warning("model %s: drift monitor reference failed (%s); PSI is not reported", monitor.model, exc)

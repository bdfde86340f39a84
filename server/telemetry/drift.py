"""Output drift monitoring, opt-in per model: is what the model answers still what it answered on its
reference data?

Switched on by the model's config.pbtxt parameters::

    parameters { key: "drift_monitor" value: { string_value: "classifier" } }  # or "embedding", "auto"
    parameters { key: "drift_output" value: { string_value: "logits" } }       # default: the first output
    parameters { key: "drift_window" value: { string_value: "5000" } }         # rows per PSI window

A classifier's rows count their top class (a histogram, labelled with the
output's label file when it has one); an embedding's rows feed a running mean
vector and a histogram of their L2 norms. The reference is the model's own
answers on its calibration data (``<model>/calibration/*.npz``, the INT8 data),
computed once at load; the population stability index (PSI) compares the last
one or two windows of live rows with it (under 0.1: stable; over 0.25: the
population has shifted). "auto" means classifier when the output has a label
file, else embedding. Work happens per executed batch on the scheduler's worker
thread (numpy, no per-row Python), and only for models that ask for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from prometheus_client.registry import Collector

from .metrics import family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from tensorgate.engines import EngineInstance

    from ..model import ModelVersion
    from ..registry import ModelRegistry

__all__ = ["DriftCollector", "DriftMonitor", "drift_monitor", "psi"]

log = logging.getLogger("tensorgate.telemetry.drift")

_EPS = 1e-4
_NORM_BINS = 10
_TRUE = ("1", "true", "yes", "on", "auto")


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


def _parameter(mv: ModelVersion, key: str) -> str:
    params = mv.config.parameters
    return params[key].string_value.strip() if key in params else ""


def drift_monitor(mv: ModelVersion, instance: EngineInstance | None) -> DriftMonitor | None:
    """The monitor a model's config asks for (None: none), with its reference from the calibration data.

    Never raises: a monitor that cannot be set up is logged and left out; the model loads regardless.
    """
    wanted = _parameter(mv, "drift_monitor").lower()
    if wanted not in (*_TRUE, "classifier", "embedding"):
        return None
    try:
        output = _parameter(mv, "drift_output") or next(iter(mv.outputs))
        info = mv.outputs[output]
        width = int(np.prod([d for d in info.dims if d > 0])) if info.dims else 1
        labels = mv.labels.get(output)
        kind = wanted if wanted in ("classifier", "embedding") else ("classifier" if labels else "embedding")
        window = int(_parameter(mv, "drift_window") or 5000)
        monitor = DriftMonitor(mv.name, mv.version_str, output, kind, width, window, labels, mv.batching)
    except (KeyError, StopIteration, ValueError) as exc:
        log.warning("model %s: drift_monitor left out: %s", mv.name, exc)
        return None
    if instance is not None:
        _reference(mv, monitor, instance)
    return monitor


def _reference(mv: ModelVersion, monitor: DriftMonitor, instance: EngineInstance) -> None:
    from tensorgate.engines.calibration import load_calibration

    try:
        dtypes = {name: t.np_dtype for name, t in mv.inputs.items()}
        calibration = load_calibration(mv.path, dtypes, mv.batching)
        if calibration is None:
            log.info("model %s: drift monitor has no reference (no calibration/*.npz); PSI is not reported",
                     mv.name)
            return
        outputs = []
        step = mv.max_batch_size or 1
        for feed in calibration.all_feeds():
            rows = len(next(iter(feed.values()))) if mv.batching else 1
            for start in range(0, rows, step if mv.batching else 1):
                part = {k: v[start:start + step] for k, v in feed.items()} if mv.batching else feed
                outputs.append(instance.run(part, [monitor.output])[monitor.output])
        monitor.set_reference(outputs)
        log.info("model %s: drift monitor (%s, output %s) has a reference of %d rows",
                 mv.name, monitor.kind, monitor.output, monitor.reference_rows)
    except Exception as exc:
        log.warning("model %s: drift monitor reference failed (%s); PSI is not reported", mv.name, exc)


class DriftCollector(Collector):
    """tensorgate_drift_* families for every model with a monitor."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        rows = family("tensorgate_drift_rows_total", "Output rows the drift monitor has seen", "counter")
        ref = family("tensorgate_drift_reference_rows", "Rows in the drift monitor's reference", "gauge")
        top = family("tensorgate_drift_top_class_total", "Rows whose top class is this class", "counter")
        norm_mean = family("tensorgate_drift_output_norm_mean", "Mean L2 norm of embedding rows", "gauge")
        mean_norm = family("tensorgate_drift_output_mean_norm", "L2 norm of the running mean embedding", "gauge")
        cosine = family("tensorgate_drift_mean_cosine",
                        "Cosine similarity of the running mean embedding and the reference mean", "gauge")
        score = family("tensorgate_drift_psi",
                       "Population stability index of recent outputs against the reference", "gauge")
        for mv in self._registry.all_versions():
            monitor = getattr(mv.scheduler, "drift", None) if mv.ready else None
            if monitor is None:
                continue
            labels = {"model": mv.name, "version": mv.version_str, "output": monitor.output}
            snap = monitor.snapshot()
            rows.add_sample(rows.name, labels, snap["rows"])
            ref.add_sample(ref.name, labels, snap["reference_rows"])
            for index, count in enumerate(snap.get("classes", ())):
                label = monitor.labels[index] if monitor.labels and index < len(monitor.labels) else str(index)
                top.add_sample(top.name, {**labels, "class": label}, int(count))
            for metric, key in ((norm_mean, "norm_mean"), (mean_norm, "mean_norm"), (cosine, "mean_cosine"),
                                (score, "psi")):
                if key in snap:
                    metric.add_sample(metric.name, labels, snap[key])
        yield from (rows, ref, top, norm_mean, mean_norm, cosine, score)

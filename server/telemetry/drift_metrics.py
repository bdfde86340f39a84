"""The drift monitors' Prometheus families (tensorgate_drift_*), one sample set per monitored model version."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.registry import Collector

from .metrics import family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ..registry import ModelRegistry

__all__ = ["DriftCollector"]


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

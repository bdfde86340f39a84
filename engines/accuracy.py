"""The accuracy gate: a reduced-precision artifact is served only if it stays close to fp32.

Both models run in ONNX Runtime on the same held-back calibration batches. The
figures, over every float output and every sample: the worst (and mean)
per-sample cosine similarity, the largest absolute error, and, for outputs
shaped like classifier scores ([batch, classes]), how often the argmax agrees.
The gate refuses an artifact below the model's thresholds with the figures in
the message, which becomes the model's UNAVAILABLE reason.

ONNX Runtime on the CPU computes an FP16 artifact in fp32 and cannot say what
a TensorRT plan does (real FP16, TF32 tactics in an FP32 plan, fused INT8), so
``measure_engine`` measures the loaded engine itself, through its instance,
on the same held-back batches (split to the engine's largest batch).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import EngineInstance, EngineLoadError, EngineRunError
from .calibration import Feed

__all__ = [
    "AccuracyGateError",
    "AccuracyReport",
    "AccuracyThresholds",
    "check_gate",
    "measure_accuracy",
    "measure_engine",
    "split_feeds",
]

# FP32 applies to TensorRT plans only (TF32 tactics); an FP32 artifact is the model itself
DEFAULT_MIN_COSINE = {"FP32": 0.999, "FP16": 0.999, "INT8": 0.99}

Runner = Callable[[Feed, Sequence[str]], Sequence[npt.NDArray[Any]]]
SPARSE_MIN_COSINE = 0.99  # a 2:4 pruned artifact (any precision) is held to at least this by default


class AccuracyGateError(EngineLoadError):
    """The artifact is further from fp32 than the model's thresholds allow."""


@dataclass(frozen=True)
class AccuracyThresholds:
    """What an artifact must meet; None disables a check.

    Args:
        min_cosine: worst per-sample cosine similarity allowed.
        max_abs_error: largest absolute error allowed.
        min_top1: smallest top-1 agreement allowed (classifier-shaped outputs only).
    """

    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_top1: float | None = None

    @classmethod
    def defaults(cls, precision: str, sparse: bool = False) -> AccuracyThresholds:
        cosine = DEFAULT_MIN_COSINE.get(precision)
        if sparse:
            cosine = SPARSE_MIN_COSINE if cosine is None else min(cosine, SPARSE_MIN_COSINE)
        return cls(min_cosine=cosine)


@dataclass(frozen=True)
class AccuracyReport:
    """The figures of one artifact against fp32.

    Args:
        samples: held-back samples compared.
        min_cosine: worst per-sample cosine similarity over all float outputs.
        mean_cosine: mean per-sample cosine similarity.
        max_abs_error: largest absolute difference.
        top1_agreement: fraction of samples whose argmax agrees (None: no classifier-shaped output).
        source: where the samples came from ("holdout", "calibration", "synthetic").
    """

    samples: int
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    top1_agreement: float | None = None
    source: str = "holdout"

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def summary(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        return (
            f"cosine min {self.min_cosine:.6f} (mean {self.mean_cosine:.6f}), max abs error "
            f"{self.max_abs_error:.3g}{top1} on {self.samples} {self.source} samples"
        )


def _session(path: Path, optimize: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # most of a session's creation time is graph optimisation
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _row_cosines(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    b2 = b.reshape(b.shape[0], -1) if b.ndim > 1 else b.reshape(1, -1)
    dot = np.sum(a2 * b2, axis=1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    # two zero vectors agree; one zero vector does not
    both_zero = norms == 0
    cos = np.where(both_zero, np.where(np.all(a2 == b2, axis=1), 1.0, 0.0), dot / np.where(both_zero, 1.0, norms))
    return np.clip(cos, -1.0, 1.0)


def measure_accuracy(
    reference: Path,
    artifact: Path,
    feeds: Sequence[Feed],
    batching: bool,
    source: str = "holdout",
    optimize: bool = True,
) -> AccuracyReport:
    """Run both models on ``feeds`` and compare every float output.

    Args:
        reference: the fp32 model.
        artifact: the reduced-precision model.
        feeds: input batches.
        batching: axis 0 is the batch (cosine per sample row); else each feed is one sample.
        source: label for the report.
        optimize: let ONNX Runtime optimise both graphs (off: faster to start, for a few samples, and the
            way an already optimized graph is served).

    Returns:
        The figures.

    Raises:
        EngineLoadError: a model failed to run, or produced non-finite values where fp32 did not.
    """
    try:
        ref, art = _session(reference, optimize), _session(artifact, optimize)
    except Exception as exc:
        raise EngineLoadError(f"cannot load the artifact for the accuracy gate: {exc}") from exc

    def run(feed: Feed, names: Sequence[str]) -> Sequence[npt.NDArray[Any]]:
        try:
            return list(art.run(list(names), dict(feed)))
        except Exception as exc:
            raise EngineLoadError(f"the artifact failed on a calibration sample: {exc}") from exc

    return _compare(ref, run, feeds, batching, source)


def split_feeds(feeds: Sequence[Feed], max_batch: int) -> list[Feed]:
    """Cut batched feeds along axis 0 into batches of at most ``max_batch`` rows (an engine's profile maximum)."""
    out: list[Feed] = []
    for feed in feeds:
        rows = int(next(iter(feed.values())).shape[0]) if feed else 0
        if max_batch <= 0 or rows <= max_batch:
            out.append(feed)
            continue
        out += [{k: v[i:i + max_batch] for k, v in feed.items()} for i in range(0, rows, max_batch)]
    return out


def measure_engine(
    reference: Path, instance: EngineInstance, feeds: Sequence[Feed], batching: bool, source: str = "holdout",
    max_batch: int = 0,
) -> AccuracyReport:
    """Run the fp32 model in ONNX Runtime and a loaded engine's instance on ``feeds`` and compare.

    Args:
        reference: the fp32 model.
        instance: an instance of the engine that will serve (a TensorRT plan, or any engine).
        feeds: input batches.
        batching: axis 0 is the batch.
        source: label for the report.
        max_batch: the engine's largest batch (0: no limit); batched feeds are split to it.

    Returns:
        The figures.

    Raises:
        EngineLoadError: a model or the engine failed to run, or produced non-finite values where fp32 did not.
    """
    try:
        ref = _session(reference, optimize=True)
    except Exception as exc:
        raise EngineLoadError(f"cannot load the fp32 model for the accuracy gate: {exc}") from exc

    def run(feed: Feed, names: Sequence[str]) -> Sequence[npt.NDArray[Any]]:
        try:
            out = instance.run(feed, names)
        except EngineRunError as exc:
            raise EngineLoadError(f"the engine failed on a held-back sample: {exc}") from exc
        return [out[n] for n in names]

    return _compare(ref, run, split_feeds(feeds, max_batch) if batching else list(feeds), batching, source)


def _compare(ref: Any, run: Runner, feeds: Sequence[Feed], batching: bool, source: str) -> AccuracyReport:
    names = [o.name for o in ref.get_outputs() if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")]
    cosines: list[npt.NDArray[np.float64]] = []
    max_abs = 0.0
    top1_hits = top1_total = 0
    samples = 0
    for feed in feeds:
        try:
            expected = ref.run(names, dict(feed))
        except Exception as exc:
            raise EngineLoadError(f"the fp32 model failed on a calibration sample: {exc}") from exc
        got = run(feed, names)
        samples += int(next(iter(feed.values())).shape[0]) if batching else 1
        for e, g in zip(expected, got, strict=True):
            e64, g64 = np.asarray(e, np.float64), np.asarray(g, np.float64)
            finite = np.isfinite(e64)
            if not np.all(np.isfinite(g64[finite])):
                raise AccuracyGateError("artifact refused: it produces NaN or inf where fp32 is finite")
            diff = np.abs(np.where(finite, e64 - g64, 0.0))
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            rows_e = e64 if batching else e64[None]
            rows_g = g64 if batching else g64[None]
            cosines.append(_row_cosines(np.nan_to_num(rows_e), np.nan_to_num(rows_g)))
            if rows_e.ndim == 2 and rows_e.shape[1] > 1:
                top1_hits += int(np.sum(np.argmax(rows_e, axis=1) == np.argmax(rows_g, axis=1)))
                top1_total += rows_e.shape[0]
    allcos = np.concatenate(cosines) if cosines else np.ones(1)
    return AccuracyReport(
        samples=samples,
        min_cosine=float(allcos.min()),
        mean_cosine=float(allcos.mean()),
        max_abs_error=max_abs,
        top1_agreement=(top1_hits / top1_total) if top1_total else None,
        source=source,
    )


def check_gate(report: AccuracyReport, thresholds: AccuracyThresholds, precision: str) -> None:
    """Refuse an artifact whose figures miss a threshold.

    Args:
        report: the artifact's figures.
        thresholds: the model's limits.
        precision: "FP16" or "INT8", for the message.

    Raises:
        AccuracyGateError: with every figure and every missed limit in the message.
    """
    missed = []
    if thresholds.min_cosine is not None and report.min_cosine < thresholds.min_cosine:
        missed.append(f"cosine {report.min_cosine:.6f} < accuracy_min_cosine {thresholds.min_cosine}")
    if thresholds.max_abs_error is not None and report.max_abs_error > thresholds.max_abs_error:
        missed.append(f"max abs error {report.max_abs_error:.4g} > accuracy_max_abs_error {thresholds.max_abs_error}")
    if (
        thresholds.min_top1 is not None
        and report.top1_agreement is not None
        and report.top1_agreement < thresholds.min_top1
    ):
        missed.append(f"top-1 agreement {report.top1_agreement:.4f} < accuracy_min_top1 {thresholds.min_top1}")
    if missed:
        raise AccuracyGateError(
            f"{precision} artifact refused by the accuracy gate: {'; '.join(missed)} "
            f"(figures: {report.summary()})"
        )

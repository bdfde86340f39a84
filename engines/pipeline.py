"""From model.onnx to a cached, gated artifact and a cached ONNX Runtime engine.

    model.onnx --prepare_artifact--> <cache>/artifacts/<key>/model.onnx (+ accuracy figures)
               --prepare_ort_engine--> <cache>/<cpu fingerprint>/<key>/model.optimized.onnx

The ONNX Runtime engine is the optimized graph (``optimized_model_filepath``) of
the artifact; it is loaded with graph optimisations off, so a warm start skips
conversion, calibration and optimisation. The TensorRT plan takes the same
artifact (engines/tensorrt/builder.py). ``prepare_checked`` runs what came from
the cache against fp32 before it serves (engines/load_check.py) and rebuilds
what fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .accuracy import AccuracyReport, AccuracyThresholds, check_gate
from .base import EngineLoadError
from .cache import STATS, CacheEntry, EngineCache, cache_key
from .devices import cpu_fingerprint, fingerprint_id
from .load_check import load_check
from .onnxruntime_engine import OrtOptions
from .precision import ARTIFACT_FILE, PrecisionSpec, artifact_fields, build_artifact, model_digest

__all__ = [
    "ARTIFACTS",
    "ORT_ENGINE_FILE",
    "ArtifactResult",
    "EngineResult",
    "ort_engine_fields",
    "prepare_artifact",
    "prepare_checked",
    "prepare_ort_engine",
]

log = logging.getLogger("tensorgate.engines.pipeline")

ARTIFACTS = "artifacts"
ORT_ENGINE_FILE = "model.optimized.onnx"
ORT_ENGINE_VERSION = 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ArtifactResult:
    """A precision artifact ready for an engine build.

    Args:
        path: the artifact file (model.onnx itself for FP32).
        spec: the precision it has.
        key: its identity (cache key; for FP32 the model's sha256).
        accuracy: its figures against fp32 (None for FP32, or when unchecked).
        cache_hit: nothing was built.
        build_seconds: time the build took (when it was built, now or earlier).
    """

    path: Path
    spec: PrecisionSpec
    key: str
    accuracy: AccuracyReport | None = None
    cache_hit: bool = True
    build_seconds: float = 0.0


@dataclass(frozen=True)
class EngineResult:
    """A built engine file for one device.

    Args:
        path: the engine file (ORT optimized graph or TensorRT plan).
        key: its cache key.
        device: the device fingerprint id it was built for.
        cache_hit: nothing was built.
        build_seconds: time its build took.
        metadata: the manifest's metadata.
    """

    path: Path
    key: str
    device: str
    cache_hit: bool
    build_seconds: float
    metadata: dict[str, Any]


def prepare_artifact(
    cache: EngineCache,
    model_path: Path,
    spec: PrecisionSpec,
    thresholds: AccuracyThresholds,
    batching: bool | None,
    progress: Progress | None = None,
) -> ArtifactResult:
    """The artifact ``spec`` asks for: from the cache, or built, measured and stored; then gated.

    Args:
        cache: the engine cache.
        model_path: ``<model>/<version>/model.onnx`` (calibration data is in ``<model>/calibration``).
        spec: the precision asked for.
        thresholds: the accuracy gate's limits (applied to stored figures too).
        batching: the model batches along axis 0 (None: inferred from its inputs).
        progress: told each step's name.

    Returns:
        The accepted artifact.

    Raises:
        AccuracyGateError: the artifact's figures miss a threshold.
        EngineLoadError: building failed.
    """
    digest = model_digest(model_path)
    if spec.is_fp32_model:
        return ArtifactResult(model_path, spec, f"fp32-{digest}")
    model_dir = Path(model_path).parent.parent
    fields = artifact_fields(digest, spec, model_dir, batching)
    key = cache_key(fields)

    def build(out_dir: Path) -> dict[str, Any]:
        log.info("%s: building the %s artifact (cache miss %s)", model_path, spec.label, key[:12])
        return build_artifact(model_path, spec, model_dir, batching, out_dir, progress)

    entry, hit = cache.get_or_build(ARTIFACTS, key, fields, build)
    accuracy = _report(entry)
    result = ArtifactResult(entry.file(ARTIFACT_FILE), spec, key, accuracy, hit, entry.build_seconds)
    if accuracy is not None:
        check_gate(accuracy, thresholds, spec.label if spec.sparsity else spec.precision)
    return result


def _report(entry: CacheEntry) -> AccuracyReport | None:
    data = entry.metadata.get("accuracy")
    return AccuracyReport.from_dict(data) if isinstance(data, dict) else None


def prepare_checked(
    cache: EngineCache,
    model_path: Path,
    spec: PrecisionSpec,
    thresholds: AccuracyThresholds,
    batching: bool | None,
    engine: Callable[[ArtifactResult], EngineResult] | None = None,
    progress: Progress | None = None,
) -> tuple[ArtifactResult, EngineResult | None]:
    """The artifact (and, with ``engine``, its engine), checked against fp32 at load when taken from the cache.

    A cached entry's manifest proves its bytes are the ones it lists, not that they are good; so what came
    from the cache runs on a few held-back samples first (engines/load_check.py). Missing the gate drops the
    entries involved and builds them again, and the artifact's figures become the ones measured now.

    Args:
        cache: the engine cache.
        model_path: the fp32 model.onnx.
        spec: the precision asked for.
        thresholds: the model's accuracy gate.
        batching: the model batches along axis 0 (None: inferred).
        engine: builds or finds the engine for an artifact (the ONNX Runtime graph); None checks the artifact.
        progress: told each step's name.

    Returns:
        (artifact, engine or None).

    Raises:
        AccuracyGateError: the (rebuilt) artifact misses the gate.
        EngineLoadError: building failed.
    """
    artifact = prepare_artifact(cache, model_path, spec, thresholds, batching, progress)
    built = engine(artifact) if engine is not None else None
    cached = (artifact.cache_hit and spec.precision != "FP32") or (built is not None and built.cache_hit)
    if not cached:  # everything was built and measured just now
        return artifact, built
    if progress:
        progress("checking the cached entry against fp32")
    target = built.path if built is not None else artifact.path
    check = load_check(model_path, target, spec.precision, thresholds, batching)
    if check.passed:
        return (replace(artifact, accuracy=check.report) if check.report else artifact), built
    STATS.add(check_failures=1)
    reason = f"on held-back samples now: {check.failure}"
    if artifact.cache_hit and spec.precision != "FP32":
        cache.discard(ARTIFACTS, artifact.key, reason)
    if built is not None:  # even one built just now: it was built from the failing artifact
        cache.discard(built.device, built.key, reason)
    artifact = prepare_artifact(cache, model_path, spec, thresholds, batching, progress)
    return artifact, (engine(artifact) if engine is not None else None)


def ort_engine_fields(artifact_key: str, graph_level: int, onnxruntime_version: str) -> dict[str, Any]:
    """Everything that makes an ORT optimized graph valid: the artifact, ORT, the CPU, the optimisation level."""
    return {
        "schema": f"ort-engine/{ORT_ENGINE_VERSION}",
        "engine": "onnxruntime",
        "artifact": artifact_key,
        "device": cpu_fingerprint(onnxruntime_version),
        "graph_level": graph_level,
        "providers": ["CPUExecutionProvider"],
    }


def prepare_ort_engine(
    cache: EngineCache, artifact: ArtifactResult, options: OrtOptions, progress: Progress | None = None
) -> EngineResult:
    """The artifact's optimized graph for this CPU, from the cache or optimized now.

    Args:
        cache: the engine cache.
        artifact: the accepted artifact.
        options: session options; their graph level decides the optimisation.
        progress: told each step's name.

    Returns:
        The engine file; load it with ``ort_options_for_cached`` options.

    Raises:
        EngineLoadError: ONNX Runtime cannot load or optimize the artifact.
    """
    import onnxruntime as ort

    fields = ort_engine_fields(artifact.key, options.graph_level, ort.__version__)
    device = fingerprint_id(fields["device"])
    key = cache_key(fields)

    def build(out_dir: Path) -> dict[str, Any]:
        if progress:
            progress("onnxruntime graph optimisation")
        start = time.monotonic()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        levels = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, levels.get(options.graph_level, "ORT_ENABLE_ALL")
        )
        so.optimized_model_filepath = str(out_dir / ORT_ENGINE_FILE)
        try:
            ort.InferenceSession(str(artifact.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineLoadError(f"onnxruntime cannot optimize {artifact.path.name}: {exc}") from exc
        if not (out_dir / ORT_ENGINE_FILE).exists():
            raise EngineLoadError("onnxruntime wrote no optimized graph")
        return {"optimize_seconds": round(time.monotonic() - start, 3), "precision": artifact.spec.label}

    entry, hit = cache.get_or_build(device, key, fields, build)
    return EngineResult(entry.file(ORT_ENGINE_FILE), key, device, hit, entry.build_seconds, entry.metadata)


def ort_options_for_cached(options: OrtOptions) -> OrtOptions:
    """Session options for a cached optimized graph: its optimisations are already applied."""
    return replace(options, graph_level=2, optimized_model_path=None)

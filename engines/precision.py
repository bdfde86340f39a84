"""One precision pipeline for every engine: model.onnx (fp32) -> the artifact a model's config asks for.

    FP32  the model itself
    FP16  fp16 compute, fp32 inputs and outputs (engines/fp16.py)
    INT8  static: calibrated, TensorRT-valid Q/DQ (engines/quantize.py); runs on ORT CPU and TensorRT
          dynamic: weights int8, activations per batch; ORT CPU only
    +2:4  (``sparsity``, with any of the three) weight matrices pruned 2:4 first (engines/sparsity.py),
          then converted; the gate compares the result with the unpruned fp32 model

``build_artifact`` writes the artifact into a folder and measures it against
fp32 on held-back calibration samples; the gate itself (thresholds) is applied
by the caller on every load, from the stored figures, so changing a threshold
never forces a rebuild. ``measure_loaded`` measures a loaded engine (a TensorRT
plan) on the same samples, since ONNX Runtime's figures do not describe it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .accuracy import AccuracyReport, measure_accuracy, measure_engine
from .base import EngineInstance, EngineLoadError
from .calibration import (
    CALIBRATION_DIR,
    CalibrationSet,
    Feed,
    calibration_digest,
    calibration_files,
    load_calibration,
)

__all__ = [
    "ARTIFACT_FILE",
    "PRECISIONS",
    "PrecisionSpec",
    "artifact_fields",
    "build_artifact",
    "gate_feeds",
    "measure_loaded",
    "model_digest",
    "model_inputs",
    "synthetic_feeds",
]

log = logging.getLogger("tensorgate.engines.precision")

PRECISIONS = ("FP32", "FP16", "INT8")
INT8_METHODS = ("static", "dynamic")
ARTIFACT_FILE = "model.onnx"
PIPELINE_VERSION = 2  # bump when the artifact recipe changes: every cached artifact becomes a miss
HOLDOUT_EVERY = 4
_SYNTHETIC_SAMPLES = 16

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PrecisionSpec:
    """What artifact a model asks for.

    Args:
        precision: "FP32", "FP16" or "INT8".
        int8_method: "static" (calibrated Q/DQ) or "dynamic" (CPU only).
        exclude_nodes: node names or glob patterns kept in float (INT8) or fp32 (FP16).
        exclude_op_types: op types kept in float (INT8 only).
        int8_fp16_base: INT8 static only: everything outside the Q/DQ pairs in fp16 (for TensorRT, whose
            strongly typed INT8 engine otherwise runs those layers in fp32).
        sparsity: "" (dense) or "2:4" (structured pruning before conversion).
        sparsity_exclude_nodes: node names or glob patterns kept dense.
    """

    precision: str = "FP32"
    int8_method: str = "static"
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    int8_fp16_base: bool = False
    sparsity: str = ""
    sparsity_exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from .sparsity import SPARSITY_PATTERNS

        if self.sparsity and self.sparsity not in SPARSITY_PATTERNS:
            raise EngineLoadError(f"sparsity must be one of {', '.join(SPARSITY_PATTERNS)} (or none), "
                                  f"got '{self.sparsity}'")
        if self.precision not in PRECISIONS:
            raise EngineLoadError(f"precision_mode must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.int8_method not in INT8_METHODS:
            raise EngineLoadError(f"int8_method must be static or dynamic, got '{self.int8_method}'")

    @property
    def label(self) -> str:
        """"FP32", "FP16", "INT8 static", "INT8 dynamic", each with " 2:4 sparse" when pruned."""
        base = f"INT8 {self.int8_method}" if self.precision == "INT8" else self.precision
        return f"{base} {self.sparsity} sparse" if self.sparsity else base

    @property
    def is_fp32_model(self) -> bool:
        """The artifact is the model file itself (dense FP32): nothing to build."""
        return self.precision == "FP32" and not self.sparsity

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "INT8" and self.int8_method == "static"


def model_digest(model_path: Path) -> str:
    """sha256 over the model file and any external-data files it references."""
    digest = hashlib.sha256(Path(model_path).read_bytes())
    model_dir = Path(model_path).parent
    externals = sorted(p for p in model_dir.iterdir() if p.is_file() and p != Path(model_path)
                       and p.suffix in (".data", ".bin", ".weights"))
    for path in externals:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _tool_versions() -> dict[str, str]:
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = str(onnxconverter_common.__version__)
    except ImportError:
        versions["onnxconverter_common"] = "missing"
    return versions


def artifact_fields(model_sha256: str, spec: PrecisionSpec, model_dir: Path, batching: bool | None) -> dict[str, Any]:
    """Everything that makes an artifact valid: the model, the recipe, the calibration data, the tools.

    Args:
        model_sha256: ``model_digest`` of model.onnx.
        spec: the precision asked for.
        model_dir: the model's folder (for its calibration data).
        batching: whether axis 0 is the batch (None: inferred from the model), which decides the hold-out split.

    Returns:
        The cache key fields.
    """
    files = calibration_files(model_dir)
    fields = {
        "schema": f"artifact/{PIPELINE_VERSION}",
        "model_sha256": model_sha256,
        "precision": spec.precision,
        "int8_method": spec.int8_method if spec.precision == "INT8" else None,
        "int8_fp16_base": spec.int8_fp16_base if spec.needs_calibration else None,
        "exclude_nodes": list(spec.exclude_nodes),
        "exclude_op_types": list(spec.exclude_op_types),
        "calibration_sha256": calibration_digest(files) if files else None,
        "holdout_every": HOLDOUT_EVERY,
        "batching": batching,
        "tools": _tool_versions(),
    }
    if spec.sparsity:  # only then, so the keys of dense artifacts stay what they were
        fields["sparsity"] = spec.sparsity
        fields["sparsity_exclude_nodes"] = list(spec.sparsity_exclude_nodes)
    return fields


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
    """(name, numpy dtype, shape with -1 for variable dims) of every real graph input."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        out.append((value.name, dtype, dims))
    return out


def synthetic_feeds(inputs: Sequence[tuple[str, np.dtype[Any], tuple[int, ...]]], batching: bool) -> list[Feed]:
    """Standard-normal batches for an all-float model with known dims; else none (gate unchecked)."""
    if not inputs:
        return []
    fixed = [d for _, _, dims in inputs for d in (dims[1:] if batching else dims)]
    if any(dt.kind != "f" for _, dt, _ in inputs) or any(d < 0 for d in fixed):
        return []
    rng = np.random.default_rng(0)
    batch = (_SYNTHETIC_SAMPLES,) if batching else ()
    feed: Feed = {
        name: rng.standard_normal(batch + (dims[1:] if batching else dims)).astype(dt) for name, dt, dims in inputs
    }
    return [feed]


def build_artifact(
    model_path: Path,
    spec: PrecisionSpec,
    model_dir: Path,
    batching: bool | None,
    out_dir: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` in the asked precision and measure it against fp32.

    Args:
        model_path: the fp32 model.
        spec: the precision asked for (not FP32).
        model_dir: the model's folder (calibration data in ``calibration/``).
        batching: the model batches along axis 0 (None: when every input's first dim is variable).
        out_dir: an empty folder (the cache entry being built).
        progress: told the name of each step as it starts.

    Returns:
        Manifest metadata: the accuracy report (None when nothing could be compared) and build facts.

    Raises:
        EngineLoadError: calibration data is missing or wrong, or conversion failed.
    """
    step = progress or (lambda _name: None)
    model = onnx.load(str(model_path))
    inputs = model_inputs(model)
    batching = _resolve_batching(inputs, batching)
    calibration: CalibrationSet | None = load_calibration(
        model_dir, {name: dt for name, dt, _ in inputs}, batching, HOLDOUT_EVERY
    )
    if spec.needs_calibration and calibration is None:
        raise EngineLoadError(
            f"INT8 static needs calibration data: put .npz files with one array per input "
            f"({', '.join(n for n, _, _ in inputs)}) in {Path(model_dir) / CALIBRATION_DIR}/, or use "
            "int8_method dynamic (CPU only)"
        )
    out = out_dir / ARTIFACT_FILE
    work = out_dir.parent / f"{out_dir.name}.work"
    work.mkdir(exist_ok=True)
    facts: dict[str, Any] = {"precision": spec.label}
    source = Path(model_path)
    try:
        if spec.sparsity:
            from .sparsity import prune_2_4

            step(f"{spec.sparsity} structured pruning")
            model, layers = prune_2_4(model, spec.sparsity_exclude_nodes)
            source = work / "pruned.onnx"
            onnx.save(model, str(source if spec.precision != "FP32" else out))
            facts["sparsity"] = {"pattern": spec.sparsity, "pruned": [x.node for x in layers if x.pruned],
                                 "dense": {x.node: x.reason for x in layers if not x.pruned}}
        if spec.precision == "FP32":
            pass  # the pruned model is the artifact
        elif spec.precision == "FP16":
            from .fp16 import convert_fp16

            step("fp16 conversion")
            onnx.save(convert_fp16(model, list(spec.exclude_nodes), list(spec.exclude_op_types)), str(out))
        elif spec.needs_calibration:
            from .quantize import quantize_int8_static

            assert calibration is not None
            step(f"int8 calibration ({calibration.samples} samples)")
            facts.update(quantize_int8_static(
                source, out, calibration.calibrate, exclude_nodes=spec.exclude_nodes,
                exclude_op_types=spec.exclude_op_types, work_dir=work, fp16_base=spec.int8_fp16_base,
            ))
        else:
            from .quantize import quantize_int8_dynamic

            step("int8 dynamic quantization")
            facts.update(quantize_int8_dynamic(
                source, out, exclude_nodes=spec.exclude_nodes, exclude_op_types=spec.exclude_op_types,
                work_dir=work,
            ))
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    del model
    step("accuracy gate")
    report = _measure(model_path, out, spec, calibration, inputs, batching)
    facts["accuracy"] = report.to_dict() if report else None
    return facts


def _resolve_batching(inputs: Sequence[tuple[str, np.dtype[Any], tuple[int, ...]]], batching: bool | None) -> bool:
    if batching is None:
        return bool(inputs) and all(dims and dims[0] < 0 for _, _, dims in inputs)
    return batching


def _feeds_for(
    spec: PrecisionSpec,
    calibration: CalibrationSet | None,
    inputs: Sequence[tuple[str, np.dtype[Any], tuple[int, ...]]],
    batching: bool,
) -> tuple[list[Feed], str]:
    if calibration is not None:
        # only a calibrated artifact has seen data: the others may use every sample
        if spec.needs_calibration:
            return list(calibration.holdout), "holdout"
        return calibration.all_feeds(), "calibration"
    return synthetic_feeds(inputs, batching), "synthetic"


def gate_feeds(model_path: Path, spec: PrecisionSpec, batching: bool | None) -> tuple[list[Feed], str, bool]:
    """The batches the accuracy gate compares on, as ``build_artifact`` chose them.

    Args:
        model_path: ``<model>/<version>/model.onnx``.
        spec: the precision.
        batching: the model batches along axis 0 (None: inferred).

    Returns:
        (feeds, their source label, batching); no feeds when nothing can be compared.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    inputs = model_inputs(model)
    batching = _resolve_batching(inputs, batching)
    model_dir = Path(model_path).parent.parent
    calibration = load_calibration(model_dir, {name: dt for name, dt, _ in inputs}, batching, HOLDOUT_EVERY)
    feeds, source = _feeds_for(spec, calibration, inputs, batching)
    return feeds, source, batching


def measure_loaded(
    instance: EngineInstance, model_path: Path, spec: PrecisionSpec, batching: bool | None, max_batch: int
) -> AccuracyReport | None:
    """Measure a loaded engine's instance against fp32 on the gate's batches.

    Args:
        instance: an instance of the engine that will serve.
        model_path: the fp32 model.
        spec: the engine's precision (which batches: held-back for INT8 static).
        batching: the model batches along axis 0 (None: inferred).
        max_batch: the engine's largest batch (0: none).

    Returns:
        The figures, or None when there is nothing to compare on (logged).
    """
    feeds, source, batching = gate_feeds(model_path, spec, batching)
    if not feeds:
        log.warning("%s: no calibration data and inputs that cannot be synthesised: the %s engine's accuracy "
                    "is unchecked", model_path, spec.label)
        return None
    return measure_engine(model_path, instance, feeds, batching, source, max_batch)


def _measure(
    model_path: Path,
    artifact: Path,
    spec: PrecisionSpec,
    calibration: CalibrationSet | None,
    inputs: Sequence[tuple[str, np.dtype[Any], tuple[int, ...]]],
    batching: bool,
) -> AccuracyReport | None:
    feeds, source = _feeds_for(spec, calibration, inputs, batching)
    if feeds:
        return measure_accuracy(model_path, artifact, feeds, batching, source)
    log.warning(
        "%s: no calibration data and inputs that cannot be synthesised: the %s artifact's accuracy is unchecked",
        model_path, spec.label,
    )
    return None

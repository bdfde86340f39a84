"""Precision, accuracy-gate and TensorRT options from a model's config.pbtxt.

Two places, as in Triton:

* model-level ``parameters`` (every engine): ``precision_mode`` FP32|FP16|INT8,
  ``int8_method`` static|dynamic, ``accuracy_min_cosine``, ``accuracy_max_abs_error``,
  ``accuracy_min_top1``, ``precision_exclude_nodes``, ``precision_exclude_op_types``,
  ``sparsity`` (none | 2:4: structured pruning before conversion) and ``sparsity_exclude_nodes``;
* Triton's ORT-TRT form, ``optimization { execution_accelerators {
  gpu_execution_accelerator [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }``,
  with ``max_workspace_size_bytes``, ``trt_builder_optimization_level``,
  ``trt_hardware_compatibility_level`` (NONE | AMPERE_PLUS | SAME_COMPUTE_CAPABILITY),
  ``int8_fp16_base`` (true by default: INT8 Q/DQ over an fp16 graph) and
  ``trt_profile_{min,opt,max}_shapes``; its precision applies to the TensorRT
  engine (on CPU, Triton's ORT backend runs such a model in fp32, and so do we
  unless the model-level ``precision_mode`` says otherwise).

The trt_* keys are also read from the model-level parameters (accelerator wins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines.accuracy import AccuracyThresholds
from tensorgate.engines.precision import PrecisionSpec
from tensorgate.engines.tensorrt.builder import (
    DEFAULT_OPT_LEVEL,
    DEFAULT_WORKSPACE,
    HARDWARE_COMPATIBILITY_LEVELS,
)
from tensorgate.engines.tensorrt.profiles import parse_shapes

__all__ = ["EngineOptions", "TrtOptions", "parse_engine_options"]

log = logging.getLogger("tensorgate.engine_options")

# Triton ORT-TRT keys that mean something else here (our cache and profiles replace them)
_IGNORED_TRT_KEYS = {
    "int8_calibration_table_name": "INT8 is calibrated from <model>/calibration/*.npz into Q/DQ ONNX",
    "int8_use_native_calibration_table": "INT8 is calibrated from <model>/calibration/*.npz into Q/DQ ONNX",
    "trt_engine_cache_enable": "plans are always cached under --engine-cache-dir",
    "trt_engine_cache_path": "plans are always cached under --engine-cache-dir",
    "trt_engine_cache_prefix": "plans are always cached under --engine-cache-dir",
    "trt_timing_cache_enable": "a timing cache per GPU is always kept under --engine-cache-dir",
    "trt_timing_cache_path": "a timing cache per GPU is always kept under --engine-cache-dir",
}
_TRT_KEYS = {
    "precision_mode",
    "max_workspace_size_bytes",
    "trt_builder_optimization_level",
    "trt_hardware_compatibility_level",
    "int8_fp16_base",
    "trt_profile_min_shapes",
    "trt_profile_opt_shapes",
    "trt_profile_max_shapes",
}


class OptionError(ValueError):
    """A precision or TensorRT option is malformed; the message becomes the UNAVAILABLE reason."""


@dataclass(frozen=True)
class TrtOptions:
    """TensorRT builder options from the config."""

    workspace_bytes: int = DEFAULT_WORKSPACE
    optimization_level: int = DEFAULT_OPT_LEVEL
    min_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    opt_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    max_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    hardware_compatibility: str = "NONE"


@dataclass(frozen=True)
class EngineOptions:
    """What a model's config asks of its engines.

    Args:
        cpu: the precision the ONNX Runtime (CPU) engine runs.
        gpu: the precision the TensorRT engine runs.
        thresholds: the gate limits the config set (None fields take the precision's defaults).
        tensorrt_requested: the config names the tensorrt GPU accelerator.
        trt: TensorRT builder options.
    """

    cpu: PrecisionSpec = field(default_factory=PrecisionSpec)
    gpu: PrecisionSpec = field(default_factory=PrecisionSpec)
    thresholds: AccuracyThresholds = field(default_factory=AccuracyThresholds)
    tensorrt_requested: bool = False
    trt: TrtOptions = field(default_factory=TrtOptions)

    def thresholds_for(self, precision: str, sparse: bool = False) -> AccuracyThresholds:
        """The config's limits, with the precision's (and pruning's) defaults where the config sets none."""
        default = AccuracyThresholds.defaults(precision, sparse)
        t = self.thresholds
        return AccuracyThresholds(
            min_cosine=t.min_cosine if t.min_cosine is not None else default.min_cosine,
            max_abs_error=t.max_abs_error,
            min_top1=t.min_top1,
        )


def _string(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value.strip() if key in config.parameters else None


def _float(raw: str | None, key: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise OptionError(f"parameter {key} must be a number, got '{raw}'") from None


def _int(raw: str | None, key: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise OptionError(f"parameter {key} must be an integer, got '{raw}'") from None


def _bool(raw: str | None, key: str, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise OptionError(f"parameter {key} must be true or false, got '{raw}'")
    return value in ("true", "1", "yes")


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (raw or "").split(",") if p.strip())


def _precision(raw: str | None, key: str) -> str:
    value = (raw or "FP32").upper()
    if value not in ("FP32", "FP16", "INT8"):
        raise OptionError(f"{key} must be FP32, FP16 or INT8, got '{raw}'")
    return value


def _tensorrt_parameters(config: mc.ModelConfig) -> dict[str, str] | None:
    if not config.HasField("optimization"):
        return None
    for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if acc.name.lower() == "tensorrt":
            return dict(acc.parameters)
    return None


def parse_engine_options(config: mc.ModelConfig) -> EngineOptions:
    """Read every precision, gate and TensorRT key of a config.

    Args:
        config: the model's config as given (before completion).

    Returns:
        The options.

    Raises:
        OptionError: a key has a malformed value.
        EngineLoadError: a profile shape is malformed.
    """
    trt_params = _tensorrt_parameters(config)
    for key in sorted(trt_params or {}):
        if key in _IGNORED_TRT_KEYS:
            log.info("model %s: tensorrt parameter %s is not used: %s", config.name, key, _IGNORED_TRT_KEYS[key])
        elif key not in _TRT_KEYS:
            log.warning("model %s: unknown tensorrt parameter %s ignored", config.name, key)

    def trt_value(key: str) -> str | None:
        if trt_params is not None and key in trt_params:
            return trt_params[key].strip()
        return _string(config, key)

    model_precision = _string(config, "precision_mode")
    cpu_precision = _precision(model_precision, "precision_mode")
    accel_precision = trt_params.get("precision_mode") if trt_params is not None else None
    gpu_precision = _precision(accel_precision or model_precision, "tensorrt precision_mode")
    method = (_string(config, "int8_method") or "static").lower()
    if method not in ("static", "dynamic"):
        raise OptionError(f"int8_method must be static or dynamic, got '{method}'")
    nodes = _list(_string(config, "precision_exclude_nodes"))
    ops = _list(_string(config, "precision_exclude_op_types"))
    sparsity = (_string(config, "sparsity") or "").lower()
    if sparsity in ("", "none", "dense"):
        sparsity = ""
    elif sparsity != "2:4":
        raise OptionError(f"sparsity must be 2:4 or none, got '{sparsity}'")
    dense = _list(_string(config, "sparsity_exclude_nodes"))
    min_shapes = parse_shapes(trt_value("trt_profile_min_shapes") or "")
    opt_shapes = parse_shapes(trt_value("trt_profile_opt_shapes") or "")
    max_shapes = parse_shapes(trt_value("trt_profile_max_shapes") or "")
    level = _int(trt_value("trt_builder_optimization_level"), "trt_builder_optimization_level", DEFAULT_OPT_LEVEL)
    if not 0 <= level <= 5:
        raise OptionError(f"trt_builder_optimization_level must be 0 to 5, got {level}")
    workspace = _int(trt_value("max_workspace_size_bytes"), "max_workspace_size_bytes", DEFAULT_WORKSPACE)
    hardware = (trt_value("trt_hardware_compatibility_level") or "NONE").upper()
    if hardware not in HARDWARE_COMPATIBILITY_LEVELS:
        raise OptionError(f"trt_hardware_compatibility_level must be one of "
                          f"{', '.join(HARDWARE_COMPATIBILITY_LEVELS)}, got '{hardware}'")
    fp16_base = _bool(trt_value("int8_fp16_base"), "int8_fp16_base", default=True)
    return EngineOptions(
        cpu=PrecisionSpec(cpu_precision, method, nodes, ops, sparsity=sparsity, sparsity_exclude_nodes=dense),
        gpu=PrecisionSpec(gpu_precision, method, nodes, ops, int8_fp16_base=fp16_base and method == "static",
                          sparsity=sparsity, sparsity_exclude_nodes=dense),
        thresholds=AccuracyThresholds(
            min_cosine=_float(_string(config, "accuracy_min_cosine"), "accuracy_min_cosine"),
            max_abs_error=_float(_string(config, "accuracy_max_abs_error"), "accuracy_max_abs_error"),
            min_top1=_float(_string(config, "accuracy_min_top1"), "accuracy_min_top1"),
        ),
        tensorrt_requested=trt_params is not None,
        trt=TrtOptions(workspace, level, min_shapes, opt_shapes, max_shapes, hardware),
    )

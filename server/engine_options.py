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

from .parameters import ParameterError, Parameters, quoted

__all__ = ["EngineOptions", "OptionError", "TrtOptions", "engine_options", "parse_engine_options", "tensorrt_parameters"]

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


# one error for every parameter (parameters.py); the old name stays for callers and tests
OptionError = ParameterError


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


def _precision(raw: str | None, key: str) -> str:
    value = (raw or "FP32").upper()
    if value not in ("FP32", "FP16", "INT8"):
        raise OptionError(f"{key} must be FP32, FP16 or INT8, got '{quoted(raw or '')}'")
    return value


def tensorrt_parameters(config: mc.ModelConfig) -> Parameters | None:
    if not config.HasField("optimization"):
        return None
    for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if acc.name.lower() == "tensorrt":
            return Parameters(dict(acc.parameters))
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
    return engine_options(config.name, Parameters.of(config), tensorrt_parameters(config))


def engine_options(model: str, params: Parameters, trt_params: Parameters | None) -> EngineOptions:
    """The options from a config's parameters and its tensorrt accelerator's (None: no accelerator)."""
    for key in (trt_params.keys() if trt_params is not None else ()):
        if key in _IGNORED_TRT_KEYS:
            log.info("model %s: tensorrt parameter %s is not used: %s", model, key, _IGNORED_TRT_KEYS[key])
        elif key not in _TRT_KEYS:
            log.warning("model %s: unknown tensorrt parameter %s ignored", model, key)
    # the trt_* keys: the accelerator's, else the model-level ones
    trt = trt_params if trt_params is not None else params

    def pick(key: str) -> Parameters:
        return trt if key in trt else params

    model_precision = params.string("precision_mode")
    cpu_precision = _precision(model_precision, "precision_mode")
    accel_precision = trt_params.string("precision_mode") if trt_params is not None else None
    gpu_precision = _precision(accel_precision or model_precision, "tensorrt precision_mode")
    method = params.text("int8_method", "static").lower()
    if method not in ("static", "dynamic"):
        raise OptionError(f"int8_method must be static or dynamic, got '{quoted(method)}'")
    nodes = params.names("precision_exclude_nodes")
    ops = params.names("precision_exclude_op_types")
    sparsity = (params.string("sparsity") or "").lower()
    if sparsity in ("", "none", "dense"):
        sparsity = ""
    elif sparsity != "2:4":
        raise OptionError(f"sparsity must be 2:4 or none, got '{quoted(sparsity)}'")
    dense = params.names("sparsity_exclude_nodes")
    min_shapes = parse_shapes(pick("trt_profile_min_shapes").text("trt_profile_min_shapes"))
    opt_shapes = parse_shapes(pick("trt_profile_opt_shapes").text("trt_profile_opt_shapes"))
    max_shapes = parse_shapes(pick("trt_profile_max_shapes").text("trt_profile_max_shapes"))
    level = pick("trt_builder_optimization_level").integer("trt_builder_optimization_level", DEFAULT_OPT_LEVEL)
    if not 0 <= level <= 5:
        raise OptionError(f"trt_builder_optimization_level must be 0 to 5, got {level}")
    workspace = pick("max_workspace_size_bytes").integer("max_workspace_size_bytes", DEFAULT_WORKSPACE)
    hardware = pick("trt_hardware_compatibility_level").text("trt_hardware_compatibility_level", "NONE").upper()
    if hardware not in HARDWARE_COMPATIBILITY_LEVELS:
        raise OptionError(f"trt_hardware_compatibility_level must be one of "
                          f"{', '.join(HARDWARE_COMPATIBILITY_LEVELS)}, got '{quoted(hardware)}'")
    fp16_base = pick("int8_fp16_base").boolean("int8_fp16_base", default=True)
    return EngineOptions(
        cpu=PrecisionSpec(cpu_precision, method, nodes, ops, sparsity=sparsity, sparsity_exclude_nodes=dense),
        gpu=PrecisionSpec(gpu_precision, method, nodes, ops, int8_fp16_base=fp16_base and method == "static",
                          sparsity=sparsity, sparsity_exclude_nodes=dense),
        thresholds=AccuracyThresholds(
            min_cosine=params.number("accuracy_min_cosine"),
            max_abs_error=params.number("accuracy_max_abs_error"),
            min_top1=params.number("accuracy_min_top1"),
        ),
        tensorrt_requested=trt_params is not None,
        trt=TrtOptions(workspace, level, min_shapes, opt_shapes, max_shapes, hardware),
    )

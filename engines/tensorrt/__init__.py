"""The TensorRT engine, importable without TensorRT or a GPU.

Nothing here imports ``tensorrt`` or touches CUDA at import time: the pure
parts (profiles, buffer plans, cache keys) work everywhere, and TensorRT is
imported only after ``engines.devices.probe_gpus()`` found a device.
"""

from __future__ import annotations

from .buffers import InstanceBuffers, TensorPlan, plan_buffers
from .builder import (
    HARDWARE_COMPATIBILITY_LEVELS,
    BuildOptions,
    distinct_devices,
    hardware_level,
    prepare_trt_plan,
    trt_plan_fields,
)
from .engine import StalePlanError, TensorRTEngine, TensorRTInstance, load_with_rebuild
from .io import IoTensor, check_io, numpy_dtype
from .profiles import (
    InputProfile,
    assign_profiles,
    compute_profiles,
    format_shapes,
    parse_shapes,
    profiles_needed,
)
from .runtime import (
    LogSink,
    TrtDistribution,
    find_distribution,
    installed_tensorrt,
    installed_tensorrt_version,
    load_tensorrt,
)

__all__ = [
    "HARDWARE_COMPATIBILITY_LEVELS",
    "BuildOptions",
    "InputProfile",
    "InstanceBuffers",
    "IoTensor",
    "LogSink",
    "StalePlanError",
    "TensorPlan",
    "TensorRTEngine",
    "TensorRTInstance",
    "TrtDistribution",
    "assign_profiles",
    "check_io",
    "compute_profiles",
    "distinct_devices",
    "find_distribution",
    "format_shapes",
    "hardware_level",
    "installed_tensorrt",
    "installed_tensorrt_version",
    "load_tensorrt",
    "load_with_rebuild",
    "numpy_dtype",
    "parse_shapes",
    "plan_buffers",
    "prepare_trt_plan",
    "profiles_needed",
    "trt_plan_fields",
]

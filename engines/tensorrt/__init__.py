"""The TensorRT engine, importable without TensorRT or a GPU.

Nothing here imports ``tensorrt`` or touches CUDA at import time: the pure
parts (profiles, buffer plans, cache keys) work everywhere, and TensorRT is
imported only after ``engines.devices.probe_gpus()`` found a device.
"""

from __future__ import annotations

from .buffers import InstanceBuffers, TensorPlan, plan_buffers
from .builder import BuildOptions, distinct_devices, prepare_trt_plan, trt_plan_fields
from .engine import TensorRTEngine, TensorRTInstance
from .profiles import InputProfile, compute_profiles, format_shapes, parse_shapes
from .runtime import installed_tensorrt_version, load_tensorrt

__all__ = [
    "BuildOptions",
    "InputProfile",
    "InstanceBuffers",
    "TensorPlan",
    "TensorRTEngine",
    "TensorRTInstance",
    "compute_profiles",
    "distinct_devices",
    "format_shapes",
    "installed_tensorrt_version",
    "load_tensorrt",
    "parse_shapes",
    "plan_buffers",
    "prepare_trt_plan",
    "trt_plan_fields",
]

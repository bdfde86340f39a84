"""Build a TensorRT plan from a precision artifact, once per distinct GPU, into the engine cache.

One step per class in Polygraphy's manner, flattened into functions: parse the
ONNX into a strongly typed network (precision comes from the artifact's fp16
tensors or Q/DQ nodes: no BuilderFlag.FP16/INT8 and no calibrator, both removed
in TensorRT 11), configure workspace, optimisation level and profiles, attach
the device's timing cache, ``build_serialized_network``, then merge the timing
cache back to disk under a lock. API features are detected by presence.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import EngineLoadError
from ..cache import EngineCache, cache_key
from ..devices import GpuDevice, gpu_fingerprint
from ..pipeline import ArtifactResult, EngineResult
from .profiles import InputProfile
from .runtime import TrtDistribution

__all__ = [
    "HARDWARE_COMPATIBILITY_LEVELS",
    "PLAN_FILE",
    "TRT_ENGINE_VERSION",
    "BuildOptions",
    "build_plan",
    "distinct_devices",
    "hardware_level",
    "prepare_trt_plan",
    "sparse_capable",
    "trt_plan_fields",
]

log = logging.getLogger("tensorgate.engines.tensorrt")

PLAN_FILE = "model.plan"
TRT_ENGINE_VERSION = 2  # 2: keyed on the TensorRT distribution, one profile per instance
DEFAULT_WORKSPACE = 1 << 30  # Triton's default max_workspace_size_bytes
DEFAULT_OPT_LEVEL = 3
HARDWARE_COMPATIBILITY_LEVELS = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings (Triton's ORT-TRT keys where they exist).

    Args:
        profiles: the optimization profile (min/opt/max per input).
        workspace_bytes: max_workspace_size_bytes.
        optimization_level: trt_builder_optimization_level (0-5).
        hardware_compatibility: trt_hardware_compatibility_level: "NONE", "AMPERE_PLUS" or
            "SAME_COMPUTE_CAPABILITY".
        profile_copies: identical copies of the profile in the plan, one per concurrent execution context
            on a GPU (``profiles.assign_profiles``).
        detailed_profiling: ``ProfilingVerbosity.DETAILED``, so the engine inspector shows each layer's
            tactic and formats (``tensorgate doctor --full`` checks INT8 kernels with it).
        sparse_weights: BuilderFlag.SPARSE_WEIGHTS (a 2:4 pruned artifact on a GPU with sparse tensor cores).
    """

    profiles: tuple[InputProfile, ...] = field(default_factory=tuple)
    workspace_bytes: int = DEFAULT_WORKSPACE
    optimization_level: int = DEFAULT_OPT_LEVEL
    hardware_compatibility: str = "NONE"
    profile_copies: int = 1
    detailed_profiling: bool = False
    sparse_weights: bool = False

    def __post_init__(self) -> None:
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY_LEVELS:
            raise EngineLoadError(
                f"trt_hardware_compatibility_level must be one of {', '.join(HARDWARE_COMPATIBILITY_LEVELS)}, "
                f"got '{self.hardware_compatibility}'"
            )
        if self.profile_copies < 1:
            raise EngineLoadError(f"a plan needs at least one optimization profile, got {self.profile_copies}")

    def key_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "profiles": [[p.name, list(p.min), list(p.opt), list(p.max)] for p in self.profiles],
            "profile_copies": self.profile_copies,
            "workspace_bytes": self.workspace_bytes,
            "optimization_level": self.optimization_level,
            "hardware_compatibility": self.hardware_compatibility,
            **({"detailed_profiling": True} if self.detailed_profiling else {}),
        }
        if self.sparse_weights:  # only when set: dense plans keep the keys they had
            fields["sparse_weights"] = True
        return fields


def sparse_capable(device: GpuDevice) -> bool:
    """Sparse tensor cores (2:4 structured sparsity): compute capability 8.0 (Ampere) and newer."""
    return tuple(device.compute_capability) >= (8, 0)


def trt_plan_fields(
    artifact_key: str, device: GpuDevice, tensorrt: TrtDistribution, options: BuildOptions
) -> dict[str, Any]:
    """Everything that makes a plan valid: the artifact, the TensorRT build, the GPU, the profiles and options.

    Args:
        artifact_key: the precision artifact's key.
        device: the GPU it is built on.
        tensorrt: the installed TensorRT distribution (its CUDA major, not cuda-bindings', goes in the key).
        options: builder settings.

    Returns:
        The cache key fields; identical GPUs give identical fields.
    """
    fingerprint = gpu_fingerprint(device, tensorrt.version, tensorrt.cuda_major)
    if options.hardware_compatibility == "AMPERE_PLUS":
        fingerprint = {"kind": "gpu", "name": "ampere-plus", "compute_capability": "8.0+",
                       "tensorrt": tensorrt.version, "cuda_major": tensorrt.cuda_major}
    elif options.hardware_compatibility == "SAME_COMPUTE_CAPABILITY":
        fingerprint = {k: v for k, v in fingerprint.items() if k not in ("name", "multiprocessors")}
        fingerprint["name"] = "same-compute-capability"
    return {
        "schema": f"trt-plan/{TRT_ENGINE_VERSION}",
        "engine": "tensorrt",
        "artifact": artifact_key,
        "device": fingerprint,
        "tensorrt": tensorrt.key_fields(),
        "build": options.key_fields(),
        "strongly_typed": True,
    }


def hardware_level(levels: Any, config_has_level: bool, requested: str) -> Any:
    """The ``trt.HardwareCompatibilityLevel`` member for ``requested``, or None for "NONE".

    Args:
        levels: ``trt.HardwareCompatibilityLevel`` (None when this TensorRT has no such enum).
        config_has_level: the builder config has ``hardware_compatibility_level``.
        requested: the option's value.

    Raises:
        EngineLoadError: a level other than NONE that this TensorRT cannot build (the key would lie).
    """
    if requested == "NONE":
        return None
    member = getattr(levels, requested, None) if levels is not None else None
    if member is None or not config_has_level:
        raise EngineLoadError(
            f"trt_hardware_compatibility_level {requested} is not supported by the installed TensorRT "
            "(it has no such hardware compatibility level): use NONE or upgrade TensorRT"
        )
    return member


class _TimingCache:
    """One timing cache file per device fingerprint, merged on save (Polygraphy's pattern)."""

    def __init__(self, cache: EngineCache, device_id: str) -> None:
        self._cache = cache
        self._name = f"timing-{device_id}"
        self.path = cache.root / ".timing" / f"{device_id}.cache"

    def load(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    def save(self, config: Any) -> None:
        """Merge and store the builder's timing cache; a read-only or full cache only costs the next build time."""
        try:
            self._save(config)
        except OSError as exc:
            log.warning("TensorRT timing cache %s not saved (%s): the next build times its tactics again",
                        self.path, exc.strerror or exc)

    def _save(self, config: Any) -> None:
        current = config.get_timing_cache()
        if current is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._cache.lock(self._name):
            previous = self.load()
            if previous:
                old = config.create_timing_cache(previous)
                if old is not None:
                    current.combine(old, True)  # ignore_mismatch: keep ours where they differ
            data = bytes(memoryview(current.serialize()))
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


def _network_flags(trt: Any) -> int:
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # 10.x opt-in; 11.x default
    if strongly is not None:
        flags |= 1 << int(strongly)
    return flags


def build_plan(trt: Any, logger: Any, onnx_path: Path, options: BuildOptions, timing: _TimingCache) -> bytes:
    """Parse, configure and build one serialized plan on the current device.

    Raises:
        EngineLoadError: parsing or building failed (with TensorRT's logged errors), or an option this
            TensorRT lacks.
    """
    from .runtime import logged_errors

    with logger.sink.capture() as errors:
        builder = trt.Builder(logger)
        if builder is None:
            raise EngineLoadError(f"TensorRT could not create a builder: {logged_errors(errors)}")
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            detail = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
            raise EngineLoadError(f"TensorRT cannot parse {onnx_path.name}: {detail}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = options.optimization_level
        level = hardware_level(getattr(trt, "HardwareCompatibilityLevel", None),
                               hasattr(config, "hardware_compatibility_level"), options.hardware_compatibility)
        if level is not None:
            config.hardware_compatibility_level = level
        if options.detailed_profiling:
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if options.sparse_weights:
            flag = getattr(trt.BuilderFlag, "SPARSE_WEIGHTS", None)  # feature-detected, as the other flags
            if flag is not None:
                config.set_flag(flag)
        if options.profiles:
            for _ in range(options.profile_copies):  # one per concurrent execution context
                profile = builder.create_optimization_profile()
                for p in options.profiles:
                    profile.set_shape(p.name, p.min, p.opt, p.max)
                if config.add_optimization_profile(profile) < 0:
                    raise EngineLoadError(f"TensorRT refused the optimization profile: {logged_errors(errors)}")
        timing_cache = config.create_timing_cache(timing.load())
        config.set_timing_cache(timing_cache, True)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineLoadError(f"TensorRT build failed: {logged_errors(errors)}")
        timing.save(config)
    return bytes(memoryview(plan))


def prepare_trt_plan(
    cache: EngineCache,
    artifact: ArtifactResult,
    device: GpuDevice,
    tensorrt: TrtDistribution,
    options: BuildOptions,
    progress: Progress | None = None,
) -> EngineResult:
    """The plan for ``device``: from the cache (shared by identical GPUs) or built on it now.

    Args:
        cache: the engine cache.
        artifact: the accepted precision artifact.
        device: the GPU to build on.
        tensorrt: the installed TensorRT distribution (``runtime.installed_tensorrt``).
        options: builder settings.
        progress: told each step's name.

    Returns:
        The plan file.

    Raises:
        EngineLoadError: no GPU or TensorRT, or the build failed.
    """
    from ..devices import fingerprint_id
    from .cuda import set_device
    from .runtime import load_tensorrt, make_logger

    trt = load_tensorrt()
    imported = str(trt.__version__)
    if not (imported.startswith(tensorrt.version) or tensorrt.version.startswith(imported)):
        raise EngineLoadError(f"the imported TensorRT is {trt.__version__}, but the installed distribution "
                              f"{tensorrt.name} is {tensorrt.version}: reinstall one TensorRT")
    fields = trt_plan_fields(artifact.key, device, tensorrt, options)
    device_id = fingerprint_id(fields["device"])
    key = cache_key(fields)

    def build(out_dir: Path) -> dict[str, Any]:
        if progress:
            progress(f"tensorrt plan on GPU {device.index}")
        log.info("building a TensorRT plan for %s on GPU %d (%s)", artifact.path.name, device.index, device.name)
        start = time.monotonic()
        set_device(device.index)
        plan = build_plan(trt, make_logger(trt), artifact.path, options, _TimingCache(cache, device_id))
        (out_dir / PLAN_FILE).write_bytes(plan)
        return {"precision": artifact.spec.label, "gpu": device.name, "build_seconds": time.monotonic() - start}

    entry, hit = cache.get_or_build(device_id, key, fields, build)
    return EngineResult(entry.file(PLAN_FILE), key, device_id, hit, entry.build_seconds, entry.metadata)


def distinct_devices(devices: Sequence[GpuDevice], tensorrt: TrtDistribution) -> list[GpuDevice]:
    """One device per fingerprint: identical GPUs share one plan, so only one of them builds."""
    seen: set[str] = set()
    out = []
    for dev in devices:
        fp = cache_key(gpu_fingerprint(dev, tensorrt.version, tensorrt.cuda_major))
        if fp not in seen:
            seen.add(fp)
            out.append(dev)
    return out

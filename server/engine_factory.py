"""Which engine runs a model version, on which devices, in which precision: the one place that decides.

``prepare`` turns model.onnx into what the config asks for (a precision
artifact through the accuracy gate, then an ONNX Runtime optimized graph for
this CPU or a TensorRT plan per distinct GPU), all through the engine cache;
``tensorgate build`` calls it alone, ahead of time. ``create_engine`` calls it
and then loads the engine. Placement: KIND_GPU needs a usable GPU and TensorRT
(else the load fails with the reason); KIND_AUTO takes them when present and
otherwise falls back to ONNX Runtime on the CPU, saying so; KIND_CPU is ONNX
Runtime. Session options follow Triton's ORT backend keys in ``parameters``.
Everything it reads of the config comes from the model's plan (plan.py).
A TensorRT plan that will not deserialize is dropped from the cache and
rebuilt once, and the loaded plan itself passes the accuracy gate (ONNX
Runtime's figures for the artifact do not describe what TensorRT computes).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import Engine, TensorSpec
from tensorgate.engines.accuracy import AccuracyReport
from tensorgate.engines.cache import DEFAULT_MAX_BYTES, EngineCache
from tensorgate.engines.devices import GpuProbe, gpu_fingerprint, probe_gpus
from tensorgate.engines.onnxruntime_engine import OnnxRuntimeEngine, OrtOptions, default_intra_op_threads
from tensorgate.engines.pipeline import (
    ArtifactResult,
    EngineResult,
    ort_options_for_cached,
    prepare_checked,
    prepare_ort_engine,
)
from tensorgate.engines.precision import PrecisionSpec
from tensorgate.engines.tensorrt import (
    BuildOptions,
    TrtDistribution,
    compute_profiles,
    distinct_devices,
    installed_tensorrt,
    installed_tensorrt_version,
    profiles_needed,
)
from tensorgate.engines.tensorrt.builder import sparse_capable

from .autocomplete import DEFAULT_MAX_BATCH_SIZE
from .engine_options import EngineOptions
from .errors import LoadError
from .plan import ModelPlan, Placement

__all__ = [
    "EngineSettings",
    "LoadError",
    "LoadedEngine",
    "Placement",
    "Prepared",
    "Progress",
    "create_engine",
    "engine_settings",
    "ort_options",
    "place",
    "prepare",
]

log = logging.getLogger("tensorgate.engine_factory")

Progress = Callable[[str], None]
_KIND_GPU = mc.ModelInstanceGroup.KIND_GPU
_KIND_AUTO = mc.ModelInstanceGroup.KIND_AUTO


@dataclass(frozen=True)
class EngineSettings:
    """Server-wide engine settings.

    Args:
        engine_cache_dir: where precision artifacts and built engines are cached (None: FP32 models
            load directly and other artifacts go to a temporary folder for the process's lifetime).
        engine_cache_max_bytes: the cache's size bound (least recently used entries are evicted).
    """

    engine_cache_dir: Path | None = None
    engine_cache_max_bytes: int = DEFAULT_MAX_BYTES


@dataclass
class LoadedEngine:
    engine: Engine
    gpu_count: int = 0  # GPUs visible to the config completion (KIND_AUTO / KIND_GPU)
    description: str = ""  # e.g. "1 intra-op thread each"; logged when the model is READY
    precision: str = "FP32"
    cache_hit: bool = False
    accuracy: AccuracyReport | None = None
    parameters: dict[str, str] = field(default_factory=dict)  # added to the effective config's parameters
    instance_count: int | None = None  # None: the config's instance counts
    placement: Placement = field(default_factory=lambda: Placement("cpu"))


@dataclass
class Prepared:
    """Everything built (or found in the cache) for one model version, before loading."""

    placement: Placement
    artifact: ArtifactResult
    engines: list[EngineResult]
    plans: dict[int, Path] = field(default_factory=dict)  # GPU index -> plan
    build_options: BuildOptions | None = None
    ort: OrtOptions | None = None
    seconds: float = 0.0

    @property
    def cache_hit(self) -> bool:
        return self.artifact.cache_hit and all(e.cache_hit for e in self.engines)


def ort_options(plan: ModelPlan) -> OrtOptions:
    """Triton's ORT backend keys (read into the plan), with defaults that fit the host."""
    engine = plan.engine
    return OrtOptions(
        intra_op_threads=engine.intra_op_threads or default_intra_op_threads(plan.instances.count),
        inter_op_threads=engine.inter_op_threads,
        graph_level=engine.graph_level,
        allow_spinning=engine.allow_spinning,
    )


def place(plan: ModelPlan, probe: GpuProbe | None = None, tensorrt_version: str | None = None) -> Placement:
    """Decide CPU or GPU from the instance groups, the GPUs found and whether TensorRT is installed.

    Raises:
        LoadError: KIND_GPU without a usable GPU or TensorRT, unknown GPU indices, or mixed kinds.
    """
    groups = plan.instances.groups
    kinds = plan.instances.kinds()
    if _KIND_GPU not in kinds and _KIND_AUTO not in kinds:
        return Placement("cpu")
    if _KIND_GPU in kinds and len(kinds) > 1:
        raise LoadError("an instance group of KIND_GPU cannot be mixed with other kinds in one model")
    probe = probe or probe_gpus()
    version = tensorrt_version if tensorrt_version is not None else installed_tensorrt_version()
    gpu_group = next((g.name for g in groups if g.kind == _KIND_GPU), "")
    missing = probe.reason if not probe.available else ("" if version else "TensorRT is not installed")
    if missing:
        if gpu_group:
            raise LoadError(f"instance group '{gpu_group}' asks for KIND_GPU, which cannot run here: {missing}")
        note = f"KIND_AUTO falls back to the CPU engine (onnxruntime): {missing}"
        log.warning("model %s: %s", plan.model, note)
        return Placement("cpu", note=note)
    present = {d.index for d in probe.devices}
    instance_gpus: list[int] = []
    for group in groups:
        gpus = list(group.gpus) or sorted(present)
        unknown = sorted(set(gpus) - present)
        if unknown:
            raise LoadError(f"instance group names GPU(s) {unknown}; this host has {sorted(present)}")
        instance_gpus += [gpu for gpu in gpus for _ in range(max(1, group.count))]
    return Placement("gpu", tuple(instance_gpus))


_temp_cache: tempfile.TemporaryDirectory[str] | None = None
_caches: dict[tuple[Path, int], EngineCache] = {}
_caches_lock = threading.Lock()


def _cache(settings: EngineSettings, needed: bool) -> EngineCache | None:
    """The process's one cache object per folder (its read-only state and warnings are per process), or None.

    An FP32 model on the CPU needs nothing converted or built: it never touches the cache (no folders, no
    locks), so a broken or read-only cache cannot stop it.
    """
    global _temp_cache
    if not needed:
        return None
    with _caches_lock:
        if settings.engine_cache_dir is not None:
            root = Path(settings.engine_cache_dir)
        else:
            if _temp_cache is None:  # removed when the process exits
                _temp_cache = tempfile.TemporaryDirectory(prefix="tensorgate-engines-")
            root = Path(_temp_cache.name)
        cache = _caches.get((root, settings.engine_cache_max_bytes))
        if cache is None:
            cache = _caches[(root, settings.engine_cache_max_bytes)] = EngineCache(
                root, settings.engine_cache_max_bytes
            )
    cache.open()  # the writability probe and the sweep of abandoned build folders, once
    return cache


def _input_specs(model_file: Path) -> list[TensorSpec]:
    import onnx

    from tensorgate.engines.precision import model_inputs

    model = onnx.load(str(model_file), load_external_data=False)
    return [TensorSpec(name, dtype.name, dims) for name, dtype, dims in model_inputs(model)]


def _tensorrt(probe: GpuProbe) -> TrtDistribution:
    """The installed TensorRT; a tar-installed wheel without a cuNN tag is keyed on the CUDA runtime's major."""
    dist = installed_tensorrt()
    if dist is None:
        raise LoadError("TensorRT is not installed")
    if not dist.cuda_major:
        return TrtDistribution(dist.name, dist.version, probe.runtime_version // 1000)
    return dist


def _prepare_gpu(cache: EngineCache, artifact: ArtifactResult, model_file: Path, plan: ModelPlan,
                 options: EngineOptions, placement: Placement, probe: GpuProbe,
                 progress: Progress | None) -> tuple[list[EngineResult], dict[int, Path], BuildOptions]:
    from tensorgate.engines.tensorrt import prepare_trt_plan

    inputs = _input_specs(model_file)
    profiles = compute_profiles(
        inputs, _trt_batching(plan, inputs), min_shapes=options.trt.min_shapes, opt_shapes=options.trt.opt_shapes,
        max_shapes=options.trt.max_shapes, preferred_batch_sizes=list(plan.batching.preferred_sizes),
    )
    build = BuildOptions(tuple(profiles), options.trt.workspace_bytes, options.trt.optimization_level,
                         options.trt.hardware_compatibility, profiles_needed(placement.instance_gpus),
                         sparse_weights=bool(artifact.spec.sparsity))
    tensorrt = _tensorrt(probe)
    used = [d for d in probe.devices if d.index in set(placement.instance_gpus)]
    results: dict[str, EngineResult] = {}
    for dev in distinct_devices(used, tensorrt):  # identical GPUs share one plan
        fp = str(gpu_fingerprint(dev, tensorrt.version, tensorrt.cuda_major))
        # sparse tensor cores: Ampere (8.0) and newer; elsewhere the flag is off (and so in the key)
        options_here = replace(build, sparse_weights=build.sparse_weights and sparse_capable(dev))
        results[fp] = prepare_trt_plan(cache, artifact, dev, tensorrt, options_here, progress)
    plans = {d.index: results[str(gpu_fingerprint(d, tensorrt.version, tensorrt.cuda_major))].path for d in used}
    return list(results.values()), plans, build


def _trt_batching(plan: ModelPlan, inputs: list[TensorSpec]) -> int:
    return plan.max_batch_size or (
        DEFAULT_MAX_BATCH_SIZE if inputs and all(s.shape and s.shape[0] < 0 for s in inputs) else 0
    )


def prepare(name: str, version: int, model_file: Path, plan: ModelPlan, settings: EngineSettings,
            progress: Progress | None = None) -> Prepared:
    """Build or find in the cache the artifact and engine(s) one model version needs on this host.

    Raises:
        LoadError: a bad option or placement.
        EngineLoadError: building failed, or the accuracy gate refused the artifact (with its figures).
    """
    start = time.monotonic()
    options = plan.engine.options
    placement = place(plan)
    spec: PrecisionSpec = options.gpu if placement.device == "gpu" else options.cpu
    if placement.device == "gpu" and spec.precision == "INT8" and spec.int8_method == "dynamic":
        raise LoadError("TensorRT runs INT8 only as Q/DQ: set int8_method static (dynamic is CPU only)")
    if placement.device == "cpu" and options.tensorrt_requested and options.gpu.precision != options.cpu.precision:
        log.info("model %s: the tensorrt accelerator's %s applies on GPUs; on the CPU it runs %s",
                 name, options.gpu.precision, options.cpu.precision)
    cache = _cache(settings, needed=not spec.is_fp32_model or placement.device == "gpu")
    batching: bool | None = True if plan.max_batch_size > 0 else None
    thresholds = options.thresholds_for(spec.precision, bool(spec.sparsity))
    if cache is None:
        artifact = ArtifactResult(model_file, spec, "fp32", cache_hit=True)
        return Prepared(placement, artifact, [], ort=ort_options(plan), seconds=time.monotonic() - start)
    if placement.device == "gpu":  # the artifact is checked on the CPU; the plans are built from it
        artifact, _ = prepare_checked(cache, model_file, spec, thresholds, batching, None, progress)
        engines, plans, build = _prepare_gpu(cache, artifact, model_file, plan, options, placement,
                                             probe_gpus(), progress)
        return Prepared(placement, artifact, engines, plans, build, seconds=time.monotonic() - start)
    ort = ort_options(plan)
    artifact, engine = prepare_checked(cache, model_file, spec, thresholds, batching,
                                       lambda a: prepare_ort_engine(cache, a, ort, progress), progress)
    assert engine is not None
    return Prepared(placement, artifact, [engine], ort=ort, seconds=time.monotonic() - start)


def _describe(name: str, version: int, prepared: Prepared) -> tuple[str, dict[str, str]]:
    artifact = prepared.artifact
    parameters = {"precision_artifact": artifact.spec.label}
    figures = ""
    if artifact.accuracy is not None:
        parameters["accuracy_report"] = artifact.accuracy.to_json()
        figures = f"; accuracy vs fp32: {artifact.accuracy.summary()}"
    if prepared.engines:
        parameters["engine_cache_key"] = ",".join(e.key[:16] for e in prepared.engines)
        state = "hit" if prepared.cache_hit else "miss (built)"
        built = sum(e.build_seconds for e in prepared.engines) + artifact.build_seconds
        log.info(
            "model %s version %d: engine cache %s: %s artifact %s, engine(s) %s; prepared in %.2f s "
            "(build time %.2f s)%s", name, version, state, artifact.spec.label, artifact.key[:12],
            ", ".join(f"{e.key[:12]} on {e.device}" for e in prepared.engines), prepared.seconds, built, figures,
        )
    return f"{artifact.spec.label}{figures}", parameters


def _gate_plan(engine: Engine, model_file: Path, plan: ModelPlan, prepared: Prepared) -> AccuracyReport | None:
    """Measure the loaded plan itself against fp32 and refuse it over the model's thresholds."""
    from tensorgate.engines.accuracy import check_gate
    from tensorgate.engines.precision import measure_loaded

    options = plan.engine.options
    spec = prepared.artifact.spec
    build = prepared.build_options
    max_batch = min((p.max[0] for p in build.profiles if p.max), default=0) if build else 0
    instance = engine.create_instance()
    try:
        report = measure_loaded(instance, model_file, spec, True if plan.max_batch_size > 0 else None, max_batch)
    finally:
        instance.close()
    if report is not None:
        check_gate(report, options.thresholds_for(spec.precision), f"TensorRT {spec.label} plan")
    return report


def _load_gpu(name: str, version: int, model_file: Path, plan: ModelPlan, settings: EngineSettings,
              first: Prepared) -> LoadedEngine:
    from tensorgate.engines.tensorrt import StalePlanError, TensorRTEngine, load_with_rebuild

    attempts = iter([first])

    def prepare_once() -> Prepared:  # the first preparation is done; a rebuild prepares again
        return next(attempts, None) or prepare(name, version, model_file, plan, settings)

    def load(prepared: Prepared) -> tuple[Prepared, TensorRTEngine]:
        assert prepared.build_options is not None
        return prepared, TensorRTEngine(prepared.plans, prepared.build_options.profiles,
                                        prepared.placement.instance_gpus)

    def discard(prepared: Prepared, exc: StalePlanError) -> None:
        cache = _cache(settings, needed=True)
        assert cache is not None
        for result in prepared.engines:
            if result.path == exc.path:
                cache.discard(result.device, result.key)

    prepared, trt_engine = load_with_rebuild(prepare_once, load, discard)
    try:
        accuracy = _gate_plan(trt_engine, model_file, plan, prepared)
    except BaseException:
        trt_engine.close()
        raise
    summary, parameters = _describe(name, version, prepared)
    if accuracy is not None:
        parameters["accuracy_report"] = accuracy.to_json()
        summary += f"; plan vs fp32: {accuracy.summary()}"
    placement = prepared.placement
    gpus = sorted(set(placement.instance_gpus))
    return LoadedEngine(
        trt_engine, gpu_count=len(probe_gpus().devices), precision=prepared.artifact.spec.label,
        description=f"{summary}; TensorRT on GPU(s) {gpus}, {len(placement.instance_gpus)} context(s)",
        cache_hit=prepared.cache_hit, accuracy=accuracy or prepared.artifact.accuracy, parameters=parameters,
        instance_count=len(placement.instance_gpus), placement=placement,
    )


def create_engine(
    name: str, version: int, model_file: Path, plan: ModelPlan, settings: EngineSettings,
    progress: Progress | None = None,
) -> LoadedEngine:
    """Build the engine for one model version from its plan (read from the config as given)."""
    prepared = prepare(name, version, model_file, plan, settings, progress)
    placement = prepared.placement
    if placement.device == "gpu":
        return _load_gpu(name, version, model_file, plan, settings, prepared)
    summary, parameters = _describe(name, version, prepared)
    options = prepared.ort or ort_options(plan)
    if prepared.engines:
        engine = OnnxRuntimeEngine(prepared.engines[0].path, ort_options_for_cached(options))
    else:
        engine = OnnxRuntimeEngine(model_file, options)
    threads = options.intra_op_threads
    notes = [summary, f"{threads} intra-op thread{'s' if threads != 1 else ''} each"]
    if placement.note:
        notes.append(placement.note)
    return LoadedEngine(
        engine, description="; ".join(notes), precision=prepared.artifact.spec.label,
        cache_hit=prepared.cache_hit, accuracy=prepared.artifact.accuracy, parameters=parameters,
        placement=placement,
    )


def engine_settings(cache_dir: Path | None, max_bytes: int = DEFAULT_MAX_BYTES) -> EngineSettings:
    """The settings a server passes to its registry (a thin seam so app.py stays unaware of engines)."""
    return EngineSettings(engine_cache_dir=cache_dir, engine_cache_max_bytes=max_bytes)


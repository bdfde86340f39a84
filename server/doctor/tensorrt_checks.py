"""``tensorgate doctor --full`` on a GPU with TensorRT: plans built, inspected, compared and run at once.

Per model (the benchmark MLP, the MiniLM demo) and precision (FP32, FP16, INT8
static over fp16): build the plan through the engine cache with one profile
per instance and detailed profiling; for INT8, read the engine inspector's JSON
and count layers running INT8 formats; drive one context at the profile's min,
opt and max shapes in turn against ONNX Runtime fp32; run ``instances``
contexts at once, each with its own batch size and sequence length, checking
every result; report free GPU memory before the load, after it and after close.
Then, once: a second prepare is a cache hit, a plan whose bytes were damaged is
caught by the cache, and a plan TensorRT will not deserialize is dropped and
rebuilt once.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorgate.engines.accuracy import AccuracyThresholds
from tensorgate.engines.cache import EngineCache
from tensorgate.engines.devices import GpuDevice
from tensorgate.engines.pipeline import ArtifactResult, prepare_artifact
from tensorgate.engines.precision import PrecisionSpec
from tensorgate.engines.tensorrt import BuildOptions, TrtDistribution

from .models import Case
from .report import Row, run_check

__all__ = ["PRECISIONS", "int8_layers", "tensorrt_rows"]

PRECISIONS = (PrecisionSpec("FP32"), PrecisionSpec("FP16"), PrecisionSpec("INT8", "static", int8_fp16_base=True))


def _cosine(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    a2, b2 = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    return float(np.min(np.sum(a2 * b2, 1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1) + 1e-30)))


_NOT_COMPUTE = ("reformat", "quantize", "shuffle", "noop", "scale", "cast")


def int8_layers(inspector_json: str) -> tuple[int, int]:
    """(compute layers reading Int8 inputs, all layers) from the engine inspector's JSON (DETAILED verbosity).

    Reformat and Q/DQ layers carry Int8 formats whatever kernels were chosen, so only layers that compute
    (GEMM, convolution, ...) on Int8 inputs count as INT8 kernels.
    """
    layers = json.loads(inspector_json).get("Layers", [])
    int8 = 0
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        kind = str(layer.get("LayerType", "")).lower()
        formats = [str(t.get("Format/Datatype", "")) for t in layer.get("Inputs", []) if isinstance(t, dict)]
        int8 += any("int8" in f.lower() for f in formats) and not any(k in kind for k in _NOT_COMPUTE)
    return int8, len(layers)


def _inspect(plan: Path) -> str:
    from tensorgate.engines.tensorrt.runtime import load_tensorrt, make_logger

    trt = load_tensorrt()
    runtime = trt.Runtime(make_logger(trt))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _reference(case: Case) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(case.model), providers=["CPUExecutionProvider"])


class _Build:
    """One (model, precision) plan on one GPU, loaded with ``instances`` contexts."""

    def __init__(self, cache: EngineCache, case: Case, spec: PrecisionSpec, device: GpuDevice,
                 tensorrt: TrtDistribution, instances: int) -> None:
        self.case, self.spec, self.device, self.tensorrt = case, spec, device, tensorrt
        self.cache = cache
        self.options = BuildOptions(case.profiles, profile_copies=instances, detailed_profiling=True)
        self.artifact: ArtifactResult = prepare_artifact(cache, case.model, spec,
                                                         AccuracyThresholds.defaults(spec.precision), True)

    def plan(self) -> Any:
        from tensorgate.engines.tensorrt import prepare_trt_plan

        return prepare_trt_plan(self.cache, self.artifact, self.device, self.tensorrt, self.options)


def _check_build(build: _Build, instances: int) -> str:
    from tensorgate.engines.tensorrt import TensorRTEngine
    from tensorgate.engines.tensorrt.cuda import mem_info, set_device

    case, spec, dev = build.case, build.spec, build.device
    set_device(dev.index)
    start = time.perf_counter()
    plan = build.plan()
    build_s = time.perf_counter() - start
    notes = [f"build {build_s:.1f} s"]
    if spec.precision == "INT8":
        int8, total = int8_layers(_inspect(plan.path))
        if not int8:
            raise AssertionError(f"no layer of {total} runs INT8: TensorRT chose no INT8 kernel")
        notes.append(f"{int8}/{total} layers INT8")
    free_before = mem_info()[0]
    engine = TensorRTEngine({dev.index: plan.path}, case.profiles, [dev.index] * instances)
    opened = [engine.create_instance() for _ in range(instances)]
    free_loaded = mem_info()[0]
    ref = _reference(case)
    names = [o.name for o in engine.outputs]
    floor = AccuracyThresholds.defaults(spec.precision).min_cosine or 0.99
    try:
        worst = 1.0
        for i, (batch, seq) in enumerate((*case.shapes, case.shapes[0], case.shapes[2], case.shapes[1])):
            feed = case.feed(batch, seq, i)  # min, opt, max, then back and forth in the same context
            got = opened[0].run(feed, names)[names[0]]
            worst = min(worst, _cosine(got, ref.run([names[0]], feed)[0]))
        if worst < floor:
            raise AssertionError(f"cosine {worst:.5f} vs onnxruntime fp32 below {floor} at the profile's shapes")
        notes.append(f"min/opt/max alternating: cos >= {worst:.5f}")
        notes.append(_concurrent(case, opened, ref, names[0], floor))
    finally:
        for inst in opened:
            inst.close()
        engine.close()
    free_closed = mem_info()[0]
    notes.append(f"free GPU MiB {free_before >> 20} -> {free_loaded >> 20} loaded -> {free_closed >> 20} closed")
    return "; ".join(notes)


def _concurrent(case: Case, opened: list[Any], ref: Any, name: str, floor: float, batches: int = 10) -> str:
    """Every instance at once, each with its own shape, every result checked against onnxruntime."""
    (b0, s0), _, (b1, s1) = case.shapes
    shapes = [(max(b0, b1 * (i + 1) // len(opened)), max(s0, s1 * (len(opened) - i) // len(opened)) if s1 else 0)
              for i in range(len(opened))]
    feeds = [case.feed(b, s, 100 + i) for i, (b, s) in enumerate(shapes)]
    want = [ref.run([name], f)[0] for f in feeds]
    errors: list[str] = []

    def loop(i: int) -> None:
        for n in range(batches):
            got = opened[i].run(feeds[i], [name])[name]
            cos = _cosine(got, want[i])
            if cos < floor:
                errors.append(f"instance {i} batch {n} shape {shapes[i]}: cosine {cos:.5f}")
                return

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(opened))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError("; ".join(errors[:3]))
    return f"{len(opened)} contexts at once, shapes {shapes}, {len(opened) * batches} results checked"


def _check_cache(build: _Build) -> str:
    """A hit; a damaged plan file caught by the cache; a plan TensorRT refuses dropped and rebuilt once."""
    from tensorgate.engines.tensorrt import StalePlanError, TensorRTEngine, load_with_rebuild

    first = build.plan()
    again = build.plan()
    if not again.cache_hit:
        raise AssertionError("the second prepare rebuilt the plan")
    with open(first.path, "r+b") as fh:  # damaged bytes: the manifest's checksum catches them
        fh.seek(len(first.path.read_bytes()) // 2)
        fh.write(b"\0" * 64)
    rebuilt = build.plan()
    if rebuilt.cache_hit:
        raise AssertionError("a damaged plan was served from the cache")
    fields = {"planted": True}  # a verified entry TensorRT cannot deserialize, under the real key
    build.cache.discard(rebuilt.device, rebuilt.key)
    from tensorgate.engines.tensorrt.builder import PLAN_FILE, trt_plan_fields

    real = trt_plan_fields(build.artifact.key, build.device, build.tensorrt, build.options)

    def junk(out: Path) -> dict[str, Any]:
        (out / PLAN_FILE).write_bytes(b"not a plan" * 100)
        return fields

    build.cache.get_or_build(rebuilt.device, rebuilt.key, real, junk)
    attempts: list[bool] = []

    def prepare() -> Any:
        result = build.plan()
        attempts.append(result.cache_hit)
        return result

    def load(result: Any) -> TensorRTEngine:
        return TensorRTEngine({build.device.index: result.path}, build.case.profiles, [build.device.index])

    def discard(result: Any, exc: StalePlanError) -> None:
        build.cache.discard(result.device, result.key)

    engine = load_with_rebuild(prepare, load, discard)
    engine.close()
    if attempts != [True, False]:
        raise AssertionError(f"expected a stale hit then one rebuild, got cache hits {attempts}")
    return "second prepare hit; damaged plan rebuilt by the cache; undeserializable plan dropped and rebuilt once"


def tensorrt_rows(device: GpuDevice, tensorrt: TrtDistribution, cases: list[Case], instances: int,
                  rows: list[Row], folder: Path | None = None) -> None:
    """Every (model, precision) row, then the cache row on the first model's FP16 plan."""
    cache = EngineCache(Path(folder or tempfile.mkdtemp(prefix="tensorgate-doctor-")) / "cache")
    builds: dict[str, _Build] = {}
    for case in cases:
        for spec in PRECISIONS:
            def one(case: Case = case, spec: PrecisionSpec = spec) -> str:
                build = _Build(cache, case, spec, device, tensorrt, instances)
                builds.setdefault(f"{case.name} {spec.label}", build)
                return _check_build(build, instances)

            run_check(rows, f"tensorrt {case.name} {spec.label}", one)
    fp16 = next((b for k, b in builds.items() if k.endswith(" FP16")), None)
    if fp16 is not None:
        run_check(rows, "tensorrt plan cache", lambda: _check_cache(fp16))

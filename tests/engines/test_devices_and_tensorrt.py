"""Device discovery, fingerprints and the TensorRT engine's pure parts, all without a GPU; GPU tests skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tensorgate.engines import EngineLoadError, TensorSpec
from tensorgate.engines.cache import cache_key
from tensorgate.engines.devices import (
    GpuDevice,
    GpuProbe,
    cpu_fingerprint,
    fingerprint_id,
    gpu_fingerprint,
    probe_gpus,
)
from tensorgate.engines.devices import cpu_info as read_cpu_info
from tensorgate.engines.tensorrt import (
    BuildOptions,
    InputProfile,
    compute_profiles,
    distinct_devices,
    format_shapes,
    load_tensorrt,
    parse_shapes,
    plan_buffers,
    trt_plan_fields,
)
from tensorgate.engines.tensorrt.buffers import ALIGNMENT

REPO_ROOT = Path(__file__).resolve().parents[2]
H100 = GpuDevice(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30, 132, "GPU-1")
H100_B = GpuDevice(1, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30, 132, "GPU-2")
L4 = GpuDevice(2, "NVIDIA L4", (8, 9), 24 * 2**30, 58, "GPU-3")
PROBE = probe_gpus()
NEEDS_GPU = pytest.mark.skipif(not PROBE.available, reason=f"needs an NVIDIA GPU: {PROBE.reason}")


# ---- devices ---------------------------------------------------------------------------------------------------

def test_probe_without_a_gpu_reports_why() -> None:
    if PROBE.available:
        pytest.skip("this host has a GPU")
    assert PROBE.devices == () and PROBE.reason.startswith(("no usable GPU", "cuda-python is not installed"))
    try:
        import cuda.bindings  # noqa: F401
    except ImportError:
        return
    # cuda-python's runtime API returns error 35 (insufficient driver) instead of raising
    assert "35" in PROBE.reason and "driver" in PROBE.reason.lower()
    assert PROBE.runtime_version > 0


def test_importing_the_engines_touches_neither_tensorrt_nor_cuda() -> None:
    code = ("import sys, engines, engines.tensorrt, engines.pipeline, server.engine_factory; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'pynvml', 'grpc')"
            " and not m.startswith('grpc')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engines_never_import_grpc_or_asyncio() -> None:
    code = "import sys, engines, engines.tensorrt, engines.pipeline, engines.precision; " \
           "print([m for m in ('grpc', 'asyncio', 'server', 'clients') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cpu_fingerprint_holds_ort_version_and_isa(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_int8 ht\n")
    info = read_cpu_info(cpuinfo)
    assert info.isa == ("amx_int8", "avx", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_2")
    fp = cpu_fingerprint("1.32.0", info)
    assert fp["onnxruntime"] == "1.32.0" and fp["isa"] == list(info.isa) and fp["kind"] == "cpu"
    assert fingerprint_id(fp).startswith(f"cpu-{info.machine.lower()}-")
    assert cache_key(fp) != cache_key(cpu_fingerprint("1.33.0", info))


def test_gpu_fingerprint_identical_gpus_share_different_ones_do_not() -> None:
    a, b, c = (gpu_fingerprint(d, "11.4.0.106", 13050) for d in (H100, H100_B, L4))
    assert a == b and a != c
    assert a == {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                 "multiprocessors": 132, "tensorrt": "11.4.0.106", "cuda_major": 13}
    assert fingerprint_id(a).startswith("gpu-nvidia-h100-80gb-hbm3-sm90-")
    assert gpu_fingerprint(H100, "10.16.1.11", 13050) != a
    assert distinct_devices([H100, H100_B, L4], "11.4.0.106", 13050) == [H100, L4]


# ---- TensorRT: cache key, profiles, buffers -----------------------------------------------------------------------

def _options(**kw: object) -> BuildOptions:
    profile = (InputProfile("x", (1, 16), (8, 16), (8, 16)),)
    return BuildOptions(**{"profiles": profile, **kw})  # type: ignore[arg-type]


def test_plan_key_covers_everything_that_makes_a_plan_valid() -> None:
    base = trt_plan_fields("art1", H100, "11.4.0.106", 13050, _options())
    assert base["artifact"] == "art1" and base["device"]["tensorrt"] == "11.4.0.106"
    assert base["build"] == {"profiles": [["x", [1, 16], [8, 16], [8, 16]]], "workspace_bytes": 1 << 30,
                             "optimization_level": 3, "hardware_compatibility": "NONE"}
    key = cache_key(base)
    variants = [
        trt_plan_fields("art2", H100, "11.4.0.106", 13050, _options()),
        trt_plan_fields("art1", L4, "11.4.0.106", 13050, _options()),
        trt_plan_fields("art1", H100, "10.16.1.11", 13050, _options()),
        trt_plan_fields("art1", H100, "11.4.0.106", 12090, _options()),
        trt_plan_fields("art1", H100, "11.4.0.106", 13050, _options(workspace_bytes=1 << 28)),
        trt_plan_fields("art1", H100, "11.4.0.106", 13050, _options(optimization_level=5)),
        trt_plan_fields("art1", H100, "11.4.0.106", 13050,
                        _options(profiles=(InputProfile("x", (1, 16), (4, 16), (8, 16)),))),
    ]
    assert len({key, *(cache_key(v) for v in variants)}) == 1 + len(variants)
    assert cache_key(trt_plan_fields("art1", H100_B, "11.4.0.106", 13050, _options())) == key
    ampere = [cache_key(trt_plan_fields("a", d, "11.4.0.106", 13050, _options(hardware_compatibility="AMPERE_PLUS")))
              for d in (H100, L4)]
    assert ampere[0] == ampere[1]


def test_shapes_parse_and_format() -> None:
    shapes = parse_shapes("input_ids:1x16, attention_mask:1x16")
    assert shapes == {"input_ids": (1, 16), "attention_mask": (1, 16)}
    assert parse_shapes(format_shapes(shapes)) == shapes
    for bad in ("input_ids", "x:1xA", ":1x2", "x:-1x3"):
        with pytest.raises(EngineLoadError, match="bad profile shape"):
            parse_shapes(bad)


def test_profiles_from_max_batch_size_and_preferred_sizes() -> None:
    inputs = [TensorSpec("x", "FP32", (-1, 3, 224, 224)), TensorSpec("y", "INT64", (-1, 4))]
    px, py = compute_profiles(inputs, 32, preferred_batch_sizes=[4, 16, 64])
    assert (px.min, px.opt, px.max) == ((1, 3, 224, 224), (16, 3, 224, 224), (32, 3, 224, 224))
    assert (py.min, py.opt, py.max) == ((1, 4), (16, 4), (32, 4))
    assert compute_profiles([TensorSpec("z", "FP32", (2, 5))], 0)[0].max == (2, 5)
    assert px.contains((7, 3, 224, 224)) and not px.contains((33, 3, 224, 224))


def test_profiles_need_explicit_shapes_for_other_variable_dims() -> None:
    inputs = [TensorSpec("input_ids", "INT64", (-1, -1))]
    with pytest.raises(EngineLoadError, match="trt_profile_min_shapes"):
        compute_profiles(inputs, 8)
    (p,) = compute_profiles(inputs, 8, min_shapes={"input_ids": (1, 1)}, opt_shapes={"input_ids": (8, 64)},
                            max_shapes={"input_ids": (8, 256)})
    assert (p.min, p.opt, p.max) == ((1, 1), (8, 64), (8, 256))
    with pytest.raises(EngineLoadError, match="min <= opt <= max"):
        compute_profiles(inputs, 8, min_shapes={"input_ids": (4, 1)}, opt_shapes={"input_ids": (1, 1)},
                         max_shapes={"input_ids": (8, 8)})
    with pytest.raises(EngineLoadError, match="needs all of"):
        compute_profiles(inputs, 8, max_shapes={"input_ids": (8, 8)})
    with pytest.raises(EngineLoadError, match="unknown inputs"):
        compute_profiles(inputs, 8, min_shapes={"nope": (1,)}, opt_shapes={"nope": (1,)}, max_shapes={"nope": (1,)})
    fixed = [TensorSpec("x", "FP32", (-1, 3))]
    with pytest.raises(EngineLoadError, match="fixes it at 3"):
        compute_profiles(fixed, 8, min_shapes={"x": (1, 4)}, opt_shapes={"x": (1, 4)}, max_shapes={"x": (1, 4)})


def test_buffers_are_planned_for_the_profile_maximum() -> None:
    plans = plan_buffers([
        ("x", np.dtype(np.float16), (32, 3, 224, 224), True),
        ("ids", np.dtype(np.int64), (8, 1), True),
        ("y", np.dtype(np.float32), (32, 1000), False),
    ])
    x, ids, y = plans
    assert x.nbytes == 32 * 3 * 224 * 224 * 2 and x.nbytes % ALIGNMENT == 0
    assert ids.nbytes == ALIGNMENT  # 64 bytes rounded up
    assert y.nbytes == 128000 and not y.is_input and y.bytes_for((5, 1000)) == 20000
    with pytest.raises(EngineLoadError, match="data-dependent"):
        plan_buffers([("z", np.dtype(np.float32), (8, -1), False)])


# ---- the no-GPU path ---------------------------------------------------------------------------------------------

def test_tensorrt_is_not_imported_without_a_gpu() -> None:
    with pytest.raises(EngineLoadError, match="TensorRT needs a GPU: no usable GPU: because"):
        load_tensorrt(GpuProbe(reason="no usable GPU: because"))


def test_tensorrt_engine_cannot_load_without_a_gpu(tmp_path: Path) -> None:
    if PROBE.available:
        pytest.skip("this host has a GPU")
    from tensorgate.engines.tensorrt import TensorRTEngine

    with pytest.raises(EngineLoadError, match="TensorRT needs a GPU"):
        TensorRTEngine({0: tmp_path / "model.plan"}, [])


# ---- on a GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@NEEDS_GPU
def test_pinned_round_trip_on_a_stream() -> None:
    from tensorgate.engines.tensorrt.cuda import (
        DeviceBuffer,
        HostBuffer,
        Stream,
        memcpy_d2h,
        memcpy_h2d,
        set_device,
    )

    set_device(PROBE.devices[0].index)
    stream, host, back, dev = Stream(), HostBuffer(4096), HostBuffer(4096), DeviceBuffer(4096)
    try:
        host.view(np.dtype(np.float32), (1024,))[:] = np.arange(1024, dtype=np.float32)
        memcpy_h2d(dev, host, 4096, stream)
        memcpy_d2h(back, dev, 4096, stream)
        stream.synchronize()
        assert np.array_equal(back.view(np.dtype(np.float32), (1024,)), np.arange(1024, dtype=np.float32))
    finally:
        for buf in (host, back, dev, stream):
            buf.free()


@pytest.mark.gpu
@NEEDS_GPU
def test_tensorrt_fp16_plan_matches_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="needs TensorRT (no wheel of its builder on PyPI)")
    from engine_models import mlp_model

    from tensorgate.engines.accuracy import AccuracyThresholds
    from tensorgate.engines.cache import EngineCache
    from tensorgate.engines.pipeline import prepare_artifact
    from tensorgate.engines.precision import PrecisionSpec
    from tensorgate.engines.tensorrt import TensorRTEngine, prepare_trt_plan

    mlp_model(tmp_path / "m" / "1" / "model.onnx")
    cache = EngineCache(tmp_path / "cache")
    artifact = prepare_artifact(cache, tmp_path / "m" / "1" / "model.onnx", PrecisionSpec("FP16"),
                                AccuracyThresholds(), True)
    options = BuildOptions(tuple(compute_profiles([TensorSpec("INPUT0", "FP32", (-1, 64))], 8)))
    plan = prepare_trt_plan(cache, artifact, PROBE.devices[0], PROBE.runtime_version, options)
    engine = TensorRTEngine({PROBE.devices[0].index: plan.path}, options.profiles)
    instance = engine.create_instance()
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(str(tmp_path / "m" / "1" / "model.onnx")).run(None, {"INPUT0": x})[0]
    got = instance.run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
    instance.close()
    engine.close()


def test_gpu_check_reports_every_check() -> None:
    """bench.gpu_check prints its table last; without a GPU every device check is skipped with the reason, and
    on a GPU the CUDA layer (round trips, stream overlap, concurrent instances) must pass."""
    import re

    out = subprocess.run([sys.executable, "-m", "tensorgate.bench.gpu_check", "--streams", "2"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout.split("gpu_check\n", 1)[1]
    rows = dict(re.findall(r"^  (.+?)\s{2,}(ok|skipped|FAILED)\s", table, re.MULTILINE))
    for check in ("device discovery", "pinned round trips", "stream overlap", "concurrent instances", "tensorrt"):
        assert check in rows, table
    cuda_layer = ("device discovery", "pinned round trips", "stream overlap", "concurrent instances")
    if PROBE.available:
        assert all(rows[c] == "ok" for c in cuda_layer), table
    else:
        assert set(rows.values()) == {"skipped"}, table
        assert PROBE.reason in table

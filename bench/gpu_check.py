"""GPU check: device discovery, pinned round trips, stream overlap, concurrent instances, TensorRT FP16/INT8 plans.

Run on a machine with an NVIDIA GPU: ``python -m tensorgate.bench.gpu_check [--streams 4]``. Without a GPU it says
why and exits 0 after the CPU-side checks; without TensorRT it says so and still checks the CUDA layer.
The last thing printed is a short table of every check (ok / FAILED / skipped, with figures).
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tensorgate.engines.devices import GpuProbe, probe_gpus

Row = tuple[str, str, str]  # check, status, detail

_SPIN_KERNEL = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def _check(rows: list[Row], name: str, fn: Callable[[], str]) -> bool:
    try:
        rows.append((name, "ok", fn()))
        return True
    except _Skip as exc:
        rows.append((name, "skipped", str(exc)))
    except Exception as exc:
        rows.append((name, "FAILED", f"{type(exc).__name__}: {exc}"))
    return False


class _Skip(Exception):
    pass


def check_discovery(probe: GpuProbe) -> str:
    if not probe.available:
        raise _Skip(probe.reason)
    return "; ".join(
        f"{d.index}: {d.name} sm_{d.compute_capability[0]}{d.compute_capability[1]} "
        f"{d.total_memory / 2**30:.0f} GiB {d.uuid}" for d in probe.devices
    ) + f" (driver {probe.driver_version}, runtime {probe.runtime_version})"


def check_round_trips(streams: int, nbytes: int = 64 << 20) -> str:
    from tensorgate.engines.tensorrt.cuda import DeviceBuffer, HostBuffer, Stream, memcpy_d2h, memcpy_h2d

    made: list[Any] = []
    try:
        work = []
        for i in range(streams):
            s, h, b, d = Stream(), HostBuffer(nbytes), HostBuffer(nbytes), DeviceBuffer(nbytes)
            made += [h, b, d, s]
            h.view(np.dtype(np.uint8), (nbytes,))[:] = np.uint8(i + 1)
            work.append((s, h, b, d))
        start = time.perf_counter()
        for s, h, b, d in work:
            memcpy_h2d(d, h, nbytes, s)
            memcpy_d2h(b, d, nbytes, s)
        for s, *_ in work:
            s.synchronize()
        seconds = time.perf_counter() - start
        for i, (_, _, b, _) in enumerate(work):
            if not np.all(b.view(np.dtype(np.uint8), (nbytes,)) == i + 1):
                raise AssertionError(f"stream {i}: data came back wrong")
        gbps = 2 * streams * nbytes / seconds / 1e9
        return f"{streams} streams x {nbytes >> 20} MiB H2D+D2H, bytes intact, {gbps:.1f} GB/s aggregate"
    finally:
        for buf in made:
            buf.free()


class _SpinKernel:
    """A clock64 spin kernel compiled with NVRTC: GPU work of a known length, no TensorRT needed."""

    def __init__(self) -> None:
        from cuda.bindings import driver, nvrtc
        from cuda.bindings import runtime as rt

        from tensorgate.engines.tensorrt.cuda import check

        try:
            err, prog = nvrtc.nvrtcCreateProgram(_SPIN_KERNEL.encode(), b"spin.cu", 0, [], [])
        except Exception as exc:  # libnvrtc missing
            raise _Skip(f"NVRTC unavailable ({exc}); pip install nvidia-cuda-nvrtc for the overlap checks") from exc
        if int(err):
            raise _Skip(f"NVRTC unavailable (error {int(err)})")
        props = check(rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        arch = f"--gpu-architecture=compute_{props.major}{props.minor}".encode()
        if int(nvrtc.nvrtcCompileProgram(prog, 1, [arch])[0]):
            raise AssertionError("NVRTC failed to compile the spin kernel")
        _, size = nvrtc.nvrtcGetPTXSize(prog)
        ptx = b" " * size
        nvrtc.nvrtcGetPTX(prog, ptx)
        check(rt.cudaFree(0), "cudaFree(0)")  # make the runtime's primary context current for the driver API
        module = check(driver.cuModuleLoadData(ptx), "cuModuleLoadData")
        self._kernel = check(driver.cuModuleGetFunction(module, b"spin"), "cuModuleGetFunction")
        self._clock_khz = int(check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrClockRate, 0),
                                    "clock rate"))
        self._driver, self._check = driver, check

    def launch(self, stream: Any, ms: float) -> None:
        args = ((int(ms * self._clock_khz),), (ctypes.c_longlong,))  # cuda-python's (values, ctypes types)
        self._check(self._driver.cuLaunchKernel(self._kernel, 1, 1, 1, 1, 1, 1, 0, stream.ptr, args, 0),
                    "cuLaunchKernel")


def check_overlap(streams: int, spin_ms: float = 50.0) -> str:
    """A spin kernel on 1 stream vs on N streams at once: overlap makes N take about as long as 1."""
    from tensorgate.engines.tensorrt.cuda import Stream

    spin = _SpinKernel()
    pool = [Stream() for _ in range(streams)]
    try:
        spin.launch(pool[0], spin_ms)
        pool[0].synchronize()  # warm-up
        start = time.perf_counter()
        spin.launch(pool[0], spin_ms)
        pool[0].synchronize()
        one = time.perf_counter() - start
        start = time.perf_counter()
        for s in pool:
            spin.launch(s, spin_ms)
        for s in pool:
            s.synchronize()
        many = time.perf_counter() - start
    finally:
        for s in pool:
            s.free()
    ratio = many / one
    verdict = "overlap" if ratio < streams * 0.6 else "NO overlap"
    if verdict != "overlap":
        raise AssertionError(f"{streams} streams took {ratio:.2f}x one stream")
    return f"spin {spin_ms:.0f} ms: 1 stream {one * 1e3:.1f} ms, {streams} streams {many * 1e3:.1f} ms ({ratio:.2f}x): {verdict}"


def check_instances(count: int, batches: int = 20, spin_ms: float = 5.0, rows: int = 64, width: int = 4096) -> str:
    """The TensorRT instance layout without TensorRT: N threads, each with its own stream and its own pinned
    and device buffers from the buffer plan, running H2D copy -> GPU work -> D2H copy -> one stream sync per
    batch. N instances finishing in about the time of one proves the threads overlap on the GPU (cuda-python
    releases the GIL while a thread waits on its stream) and that the copies come back intact."""
    from tensorgate.engines.tensorrt.buffers import InstanceBuffers, plan_buffers
    from tensorgate.engines.tensorrt.cuda import Stream, memcpy_d2h, memcpy_h2d

    spin = _SpinKernel()
    f32 = np.dtype(np.float32)
    plan = plan_buffers([("INPUT0", f32, (rows, width), True), ("OUTPUT0", f32, (rows, width), False)])
    made = [(Stream(), InstanceBuffers(plan)) for _ in range(count)]
    nbytes = plan[0].bytes_for((rows, width))

    def instance(i: int, errors: list[str]) -> None:
        stream, buffers = made[i]
        host_in, host_out = buffers.host["INPUT0"], buffers.host["OUTPUT0"]
        dev = buffers.device["INPUT0"]
        for b in range(batches):
            host_in.view(f32, (rows, width))[:] = i * 1000 + b
            memcpy_h2d(dev, host_in, nbytes, stream)
            spin.launch(stream, spin_ms)
            memcpy_d2h(host_out, dev, nbytes, stream)
            stream.synchronize()
            if not np.all(host_out.view(f32, (rows, width)) == i * 1000 + b):
                errors.append(f"instance {i} batch {b}: data came back wrong")
                return

    def run(n: int) -> float:
        errors: list[str] = []
        threads = [threading.Thread(target=instance, args=(i, errors)) for i in range(n)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise AssertionError(errors[0])
        return time.perf_counter() - start

    try:
        run(1)  # warm-up
        one, many = run(1), run(count)
    finally:
        for stream, buffers in made:
            buffers.free()
            stream.free()
    ratio = many / one
    if ratio > count * 0.6:
        raise AssertionError(f"{count} instance threads took {ratio:.2f}x one: they did not overlap")
    per_batch = one / batches * 1e3
    return (f"{count} threads x {batches} batches (H2D {nbytes >> 20} MiB, {spin_ms:.0f} ms kernel, D2H, sync): "
            f"1 instance {one * 1e3:.0f} ms ({per_batch:.2f} ms/batch), {count} instances {many * 1e3:.0f} ms "
            f"({ratio:.2f}x); {count * batches / many:.0f} vs {batches / one:.0f} batches/s, data intact")


def check_onnxruntime_providers() -> str:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    return f"onnxruntime {ort.__version__}: {', '.join(providers)}"


def _test_model(folder: Path) -> Path:
    from tensorgate.server.demo.models import build_mlp

    model_dir = folder / "mlp"
    build_mlp(model_dir / "1" / "model.onnx", sizes=(256, 1024, 1024, 10))
    cal = model_dir / "calibration"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.savez(cal / f"{i}.npz", INPUT0=rng.standard_normal((16, 256)).astype(np.float32))
    return model_dir / "1" / "model.onnx"


def _time(fn: Callable[[], object], repeat: int = 50) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def check_tensorrt(probe: GpuProbe, streams: int, rows: list[Row]) -> None:
    from tensorgate.engines import TensorSpec
    from tensorgate.engines.accuracy import AccuracyThresholds
    from tensorgate.engines.cache import EngineCache
    from tensorgate.engines.onnxruntime_engine import OnnxRuntimeEngine
    from tensorgate.engines.pipeline import prepare_artifact
    from tensorgate.engines.precision import PrecisionSpec
    from tensorgate.engines.tensorrt import (
        BuildOptions,
        TensorRTEngine,
        compute_profiles,
        installed_tensorrt_version,
        prepare_trt_plan,
    )

    if installed_tensorrt_version() is None:
        rows.append(("tensorrt", "skipped", "TensorRT is not installed (its builder has no wheel on PyPI); "
                     "the CUDA checks above ran without it"))
        return
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model = _test_model(folder)
    cache = EngineCache(folder / "cache")
    ort = OnnxRuntimeEngine(model).create_instance()
    x1 = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    x32 = np.random.default_rng(2).standard_normal((32, 256)).astype(np.float32)
    ref = ort.run({"INPUT0": x32}, ["OUTPUT0"])["OUTPUT0"]
    rows.append(("onnxruntime fp32 (CPU)", "ok", f"b1 {_time(lambda: ort.run({'INPUT0': x1}, ['OUTPUT0'])) * 1e3:.3f} ms, "
                 f"b32 {_time(lambda: ort.run({'INPUT0': x32}, ['OUTPUT0'])) * 1e3:.3f} ms"))
    options = BuildOptions(tuple(compute_profiles([TensorSpec("INPUT0", "FP32", (-1, 256))], 32)))
    dev = probe.devices[0]
    for spec in (PrecisionSpec("FP32"), PrecisionSpec("FP16"), PrecisionSpec("INT8", "static")):
        def build_and_time(spec: PrecisionSpec = spec) -> str:
            artifact = prepare_artifact(cache, model, spec, AccuracyThresholds(), True)
            start = time.perf_counter()
            plan = prepare_trt_plan(cache, artifact, dev, probe.runtime_version, options)
            build_s = time.perf_counter() - start
            engine = TensorRTEngine({dev.index: plan.path}, options.profiles, [dev.index] * streams)
            instances = [engine.create_instance() for _ in range(streams)]
            got = instances[0].run({"INPUT0": x32}, ["OUTPUT0"])["OUTPUT0"]
            cos = float(np.min(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))))
            err = float(np.abs(got - ref).max())
            b1 = _time(lambda: instances[0].run({"INPUT0": x1}, ["OUTPUT0"]))
            b32 = _time(lambda: instances[0].run({"INPUT0": x32}, ["OUTPUT0"]))
            seq = _throughput(instances[:1], x32)
            par = _throughput(instances, x32)
            for inst in instances:
                inst.close()
            engine.close()
            return (f"build {build_s:.1f} s; vs ORT fp32: cos {cos:.5f}, max|err| {err:.3g}; b1 {b1 * 1e3:.3f} ms, "
                    f"b32 {b32 * 1e3:.3f} ms; {streams} contexts/streams {par:.0f} vs 1: {seq:.0f} batches/s")

        _check(rows, f"tensorrt {spec.label}", build_and_time)


def _throughput(instances: list[Any], x: np.ndarray, seconds: float = 1.0) -> float:
    counts = [0] * len(instances)
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            instances[i].run({"INPUT0": x}, ["OUTPUT0"])
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(instances))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=4, help="streams / execution contexts to overlap")
    args = parser.parse_args()
    rows: list[Row] = []
    probe = probe_gpus()
    found = _check(rows, "device discovery", lambda: check_discovery(probe))
    if found:
        from tensorgate.engines.tensorrt.cuda import set_device

        set_device(probe.devices[0].index)
        _check(rows, "pinned round trips", lambda: check_round_trips(args.streams))
        _check(rows, "stream overlap", lambda: check_overlap(args.streams))
        _check(rows, "concurrent instances", lambda: check_instances(args.streams))
        _check(rows, "onnxruntime providers", check_onnxruntime_providers)
        check_tensorrt(probe, args.streams, rows)
    else:
        for name in ("pinned round trips", "stream overlap", "concurrent instances", "tensorrt"):
            rows.append((name, "skipped", "no GPU"))
    width = max(len(r[0]) for r in rows)
    print("\ngpu_check")
    for name, status, detail in rows:
        print(f"  {name:<{width}}  {status:<8} {detail}")
    return 1 if any(status == "FAILED" for _, status, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

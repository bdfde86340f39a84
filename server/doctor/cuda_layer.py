"""The CUDA layer the TensorRT engine stands on, checked without TensorRT: copies, streams, instance threads.

Each check runs on the GPU the caller made current and says what it measured.
The spin kernel (NVRTC) is compiled for, and timed with the clock of, that
same GPU, and driver-API results are checked with their own error names.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

import numpy as np

from tensorgate.engines.devices import GpuDevice, GpuProbe

from .report import Skip

__all__ = ["SpinKernel", "check_discovery", "check_instances", "check_overlap", "check_round_trips"]

_SPIN_KERNEL = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def check_discovery(probe: GpuProbe) -> str:
    if not probe.available:
        raise Skip(probe.reason)
    return "; ".join(
        f"{d.index}: {d.name} sm_{d.compute_capability[0]}{d.compute_capability[1]} "
        f"{d.total_memory / 2**30:.0f} GiB {d.uuid}" for d in probe.devices
    )


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


class SpinKernel:
    """A clock64 spin kernel compiled with NVRTC for one GPU: GPU work of a known length, no TensorRT needed."""

    def __init__(self, device: GpuDevice) -> None:
        from cuda.bindings import driver, nvrtc
        from cuda.bindings import runtime as rt

        from tensorgate.engines.tensorrt.cuda import check

        try:
            err, prog = nvrtc.nvrtcCreateProgram(_SPIN_KERNEL.encode(), b"spin.cu", 0, [], [])
        except Exception as exc:  # libnvrtc missing
            raise Skip(f"NVRTC unavailable ({exc}); pip install nvidia-cuda-nvrtc for the overlap checks") from exc
        check(err, "nvrtcCreateProgram")
        major, minor = device.compute_capability
        arch = f"--gpu-architecture=compute_{major}{minor}".encode()
        if int(nvrtc.nvrtcCompileProgram(prog, 1, [arch])[0]):
            raise AssertionError(f"NVRTC failed to compile the spin kernel for sm_{major}{minor}")
        size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        check(rt.cudaFree(0), "cudaFree(0)")  # make the runtime's primary context current for the driver API
        module = check(driver.cuModuleLoadData(ptx), "cuModuleLoadData")
        self._kernel = check(driver.cuModuleGetFunction(module, b"spin"), "cuModuleGetFunction")
        attr = rt.cudaDeviceAttr.cudaDevAttrClockRate
        self._clock_khz = int(check(rt.cudaDeviceGetAttribute(attr, device.index), "clock rate"))
        self._driver, self._check = driver, check

    def launch(self, stream: Any, ms: float) -> None:
        args = ((int(ms * self._clock_khz),), (ctypes.c_longlong,))  # cuda-python's (values, ctypes types)
        self._check(self._driver.cuLaunchKernel(self._kernel, 1, 1, 1, 1, 1, 1, 0, stream.ptr, args, 0),
                    "cuLaunchKernel")


def check_overlap(device: GpuDevice, streams: int, spin_ms: float = 50.0) -> str:
    """A spin kernel on 1 stream vs on N streams at once: overlap makes N take about as long as 1."""
    from tensorgate.engines.tensorrt.cuda import Stream

    spin = SpinKernel(device)
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
    if ratio >= streams * 0.6:
        raise AssertionError(f"{streams} streams took {ratio:.2f}x one stream: NO overlap")
    return f"spin {spin_ms:.0f} ms: 1 stream {one * 1e3:.1f} ms, {streams} streams {many * 1e3:.1f} ms ({ratio:.2f}x)"


def check_instances(device: GpuDevice, count: int, batches: int = 20, spin_ms: float = 5.0, rows: int = 64,
                    width: int = 4096) -> str:
    """The TensorRT instance layout without TensorRT: N threads, each with its own stream and buffers from the
    buffer plan, running H2D copy -> GPU work -> D2H copy -> one stream sync per batch. N instances finishing
    in about the time of one proves the threads overlap on the GPU and the copies come back intact."""
    from tensorgate.engines.tensorrt.buffers import InstanceBuffers, plan_buffers
    from tensorgate.engines.tensorrt.cuda import Stream, memcpy_d2h, memcpy_h2d

    spin = SpinKernel(device)
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
            stream.synchronize()
            buffers.free()
            stream.free()
    ratio = many / one
    if ratio > count * 0.6:
        raise AssertionError(f"{count} instance threads took {ratio:.2f}x one: they did not overlap")
    return (f"{count} threads x {batches} batches (H2D {nbytes >> 20} MiB, {spin_ms:.0f} ms kernel, D2H, sync): "
            f"1 instance {one * 1e3:.0f} ms, {count} instances {many * 1e3:.0f} ms ({ratio:.2f}x), data intact")

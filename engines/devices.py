"""Which devices this host has, and the fingerprint an engine built for one of them is valid on.

GPU discovery goes through cuda-python's runtime API only: ``cudaGetDeviceCount``
returns an error code (35, "insufficient driver") instead of raising when there
is no driver, whereas the driver API and cuda.core raise. NVML adds names and
UUIDs when it is there. Nothing TensorRT is imported here: callers import it only
after ``probe_gpus()`` found a device (spec/tensorrt.md §2).

A fingerprint is a small JSON-able dict of everything about a device that makes
a built engine valid or optimal on it; it goes into every cache key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CpuInfo",
    "GpuDevice",
    "GpuProbe",
    "cpu_fingerprint",
    "fingerprint_id",
    "gpu_fingerprint",
    "probe_gpus",
]

log = logging.getLogger("tensorgate.engines.devices")

# ISA flags that change which kernels ONNX Runtime picks (and so what its optimized graph holds)
_ISA_FLAGS = re.compile(
    r"^(sse4_1|sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni\w*|amx\w*|asimd\w*|sve\w*|sve2|i8mm|bf16|fphp|dotprod)$"
)


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device as the runtime API (and NVML, when present) describe it.

    Args:
        index: CUDA device ordinal (what ``cudaSetDevice`` and config ``gpus: [...]`` mean).
        name: marketing name, e.g. "NVIDIA H100 80GB HBM3".
        compute_capability: (major, minor).
        total_memory: bytes of device memory.
        multiprocessors: SM count (part of the fingerprint: same name, different SKU).
        uuid: "GPU-xxxxxxxx-...", from NVML or the runtime's cudaDeviceProp.uuid.
    """

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int
    multiprocessors: int
    uuid: str = ""


@dataclass(frozen=True)
class GpuProbe:
    """What the CUDA probe found.

    Args:
        devices: usable devices (empty when there is no GPU or no driver).
        runtime_version: CUDA runtime version, e.g. 13050 (0 when cuda-python is missing).
        driver_version: CUDA driver version (0: no driver).
        reason: why there are no devices; empty when there are some.
    """

    devices: tuple[GpuDevice, ...] = ()
    runtime_version: int = 0
    driver_version: int = 0
    reason: str = ""

    @property
    def available(self) -> bool:
        return bool(self.devices)


@dataclass(frozen=True)
class CpuInfo:
    machine: str
    isa: tuple[str, ...] = field(default_factory=tuple)


def _uuid_text(raw: Any) -> str:
    data = bytes(getattr(raw, "bytes", raw) or b"")
    if len(data) != 16:
        return ""
    h = data.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _nvml_names() -> dict[str, str]:
    """UUID -> NVML name; empty when NVML (nvidia-ml-py or libnvidia-ml) is missing."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound and friends
        log.debug("NVML unavailable: %s", exc)
        return {}
    names: dict[str, str] = {}
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            names[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = (
                name.decode() if isinstance(name, bytes) else str(name)
            )
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return names


def _error_text(rt: Any, err: Any) -> str:
    code = int(err)
    try:
        _, name = rt.cudaGetErrorName(err)
        _, text = rt.cudaGetErrorString(err)
        return f"{name.decode()} ({code}): {text.decode()}"
    except Exception:
        return f"CUDA error {code}"


def _probe() -> GpuProbe:
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        return GpuProbe(reason="cuda-python is not installed (pip install 'tensorgate[tensorrt-cu13]', or "
                               "'tensorgate[tensorrt-cu12]' on a CUDA 12 driver)")
    _, runtime_version = rt.cudaRuntimeGetVersion()
    _, driver_version = rt.cudaDriverGetVersion()
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        detail = _error_text(rt, err)
        if not driver_version:
            detail += "; no NVIDIA driver is installed"
        elif driver_version < runtime_version:
            detail += f"; driver {driver_version} is older than the CUDA runtime {runtime_version}"
        return GpuProbe((), int(runtime_version), int(driver_version or 0), f"no usable GPU: {detail}")
    if not count:
        return GpuProbe((), int(runtime_version), int(driver_version), "no usable GPU: CUDA reports 0 devices")
    names = _nvml_names()
    devices = []
    for index in range(count):
        err, prop = rt.cudaGetDeviceProperties(index)
        if int(err) != 0:
            log.warning("GPU %d: cudaGetDeviceProperties failed: %s", index, _error_text(rt, err))
            continue
        raw_name = prop.name
        name = raw_name.decode(errors="replace").rstrip("\x00") if isinstance(raw_name, bytes) else str(raw_name)
        uuid = _uuid_text(prop.uuid)
        devices.append(
            GpuDevice(
                index=index,
                name=names.get(uuid, name),
                compute_capability=(int(prop.major), int(prop.minor)),
                total_memory=int(prop.totalGlobalMem),
                multiprocessors=int(prop.multiProcessorCount),
                uuid=uuid,
            )
        )
    reason = "" if devices else "no usable GPU: every device failed cudaGetDeviceProperties"
    return GpuProbe(tuple(devices), int(runtime_version), int(driver_version), reason)


@functools.lru_cache(maxsize=1)
def _cached_probe() -> GpuProbe:
    probe = _probe()
    if probe.available:
        log.info("GPUs: %s", ", ".join(f"{d.index}: {d.name} (sm_{d.compute_capability[0]}{d.compute_capability[1]})"
                                       for d in probe.devices))
    else:
        log.info("%s", probe.reason)
    return probe


def probe_gpus(refresh: bool = False) -> GpuProbe:
    """Find CUDA devices once per process (the answer does not change while it runs).

    Args:
        refresh: probe again instead of returning the first answer.

    Returns:
        The devices, or none with the reason.
    """
    if refresh:
        _cached_probe.cache_clear()
    return _cached_probe()


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(sorted({f for f in value.split() if _ISA_FLAGS.match(f)}))
    return ()


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    return CpuInfo(platform.machine(), _cpu_flags(cpuinfo))


def cpu_fingerprint(onnxruntime_version: str, info: CpuInfo | None = None) -> dict[str, Any]:
    """What makes an ONNX Runtime optimized graph valid on this CPU.

    Args:
        onnxruntime_version: ``onnxruntime.__version__``.
        info: the CPU (default: this host's).

    Returns:
        A JSON-able fingerprint.
    """
    info = info or cpu_info()
    return {"kind": "cpu", "onnxruntime": onnxruntime_version, "machine": info.machine, "isa": list(info.isa)}


def gpu_fingerprint(device: GpuDevice, tensorrt_version: str, cuda_major: int) -> dict[str, Any]:
    """What makes a TensorRT plan valid (and its tactics optimal) on one GPU.

    Identical GPUs give identical fingerprints, so they share one cached plan.

    Args:
        device: the GPU.
        tensorrt_version: full ``tensorrt.__version__`` (plans do not cross versions).
        cuda_major: the CUDA major TensorRT was built for (its wheel's cuNN tag), e.g. 13.

    Returns:
        A JSON-able fingerprint.
    """
    return {
        "kind": "gpu",
        "name": device.name,
        "compute_capability": f"{device.compute_capability[0]}.{device.compute_capability[1]}",
        "multiprocessors": device.multiprocessors,
        "tensorrt": tensorrt_version,
        "cuda_major": cuda_major,
    }


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """A readable, stable folder name for a fingerprint: ``cpu-x86_64-1a2b3c4d``, ``gpu-nvidia-h100-sm90-...``."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]
    if fingerprint.get("kind") == "gpu":
        name = re.sub(r"[^a-z0-9]+", "-", str(fingerprint.get("name", "gpu")).lower()).strip("-")[:40]
        cc = str(fingerprint.get("compute_capability", "")).replace(".", "")
        return f"gpu-{name}-sm{cc}-{digest}"
    machine = re.sub(r"[^a-z0-9_]+", "-", str(fingerprint.get("machine", "cpu")).lower())
    return f"cpu-{machine}-{digest}"

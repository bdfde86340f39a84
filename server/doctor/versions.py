"""Versions and drivers: what is installed and whether its parts fit together (no GPU needed)."""

from __future__ import annotations

import importlib.metadata

from tensorgate.engines.devices import GpuProbe
from tensorgate.engines.tensorrt import TrtDistribution, installed_tensorrt

from .report import Row, Skip, run_check

__all__ = ["cuda_version_text", "pairing_problem", "version_rows"]


def cuda_version_text(version: int) -> str:
    """13040 -> "13.4" (CUDA's encoding: 1000 * major + 10 * minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pairing_problem(tensorrt: TrtDistribution | None, cuda_bindings: str | None) -> str | None:
    """Why this TensorRT and this cuda-bindings do not belong together, or None.

    cuda-bindings 13.x needs a CUDA-13 (R580+) driver; beside a cu12 TensorRT it is the wrong layer.
    """
    if tensorrt is None or not tensorrt.cuda_major or cuda_bindings is None:
        return None
    major = int(cuda_bindings.split(".", 1)[0])
    if major == tensorrt.cuda_major:
        return None
    return (f"cuda-bindings {cuda_bindings} (CUDA {major}) beside {tensorrt.name} {tensorrt.version} (CUDA "
            f"{tensorrt.cuda_major}): pip install 'tensorgate[tensorrt-cu{tensorrt.cuda_major}]'")


def version_rows(probe: GpuProbe, rows: list[Row]) -> None:
    """cuda-bindings, the CUDA runtime and driver, NVML, TensorRT and ONNX Runtime."""
    bindings = _version("cuda-bindings")
    tensorrt = installed_tensorrt()

    def cuda_python() -> str:
        if bindings is None:
            raise Skip("cuda-bindings is not installed: pip install 'tensorgate[tensorrt-cu13]' (or -cu12)")
        return f"cuda-bindings {bindings}, CUDA runtime {cuda_version_text(probe.runtime_version)}"

    def driver() -> str:
        if not probe.driver_version:
            raise Skip("no NVIDIA driver is installed")
        text = f"CUDA driver {cuda_version_text(probe.driver_version)}"
        if probe.driver_version < probe.runtime_version:
            raise RuntimeError(f"{text} is older than the CUDA runtime {cuda_version_text(probe.runtime_version)}")
        return text

    def nvml() -> str:
        version = _version("nvidia-ml-py")
        if version is None:
            raise Skip("nvidia-ml-py is not installed")
        import pynvml

        try:
            pynvml.nvmlInit()
        except Exception as exc:
            raise Skip(f"nvidia-ml-py {version}; the NVML library did not load ({exc})") from exc
        try:
            raw = pynvml.nvmlSystemGetDriverVersion()
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return f"nvidia-ml-py {version}, driver {text}, {count} device(s)"

    def trt() -> str:
        if tensorrt is None:
            raise Skip("TensorRT is not installed (its libs come from NVIDIA's index: "
                       "pip install 'tensorgate[tensorrt-cu13]' or -cu12)")
        problem = pairing_problem(tensorrt, bindings)
        if problem:
            raise RuntimeError(problem)
        cuda = f"CUDA {tensorrt.cuda_major}" if tensorrt.cuda_major else "CUDA major not in its name"
        return f"{tensorrt.name} {tensorrt.version} ({cuda})"

    def onnxruntime() -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}"

    run_check(rows, "cuda-python", cuda_python)
    run_check(rows, "driver", driver)
    run_check(rows, "nvml", nvml)
    run_check(rows, "tensorrt", trt)
    run_check(rows, "onnxruntime", onnxruntime)

"""Import TensorRT only after a positive GPU probe, with a logger that keeps its errors.

Without a driver, TensorRT's constructors misbehave instead of raising
(``trt.Builder`` -> "factory function returned nullptr"; the lean
``trt.Runtime`` logs error 35 and returns an object that segfaults on use), so
``load_tensorrt`` refuses to import it unless ``probe_gpus()`` found a device,
and every TensorRT object is created with a ``RecordingLogger`` whose errors
are checked and put into our messages.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from types import ModuleType
from typing import Any

from ..base import EngineLoadError
from ..devices import GpuProbe, probe_gpus

__all__ = ["installed_tensorrt_version", "load_tensorrt", "make_logger"]

log = logging.getLogger("tensorgate.engines.tensorrt")

_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12")
_logger_lock = threading.Lock()
_logger: Any = None


def installed_tensorrt_version() -> str | None:
    """TensorRT's version from package metadata, without importing it (None: not installed)."""
    for dist in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def load_tensorrt(probe: GpuProbe | None = None) -> ModuleType:
    """The ``tensorrt`` module, imported only where a GPU is usable.

    Args:
        probe: the GPU probe (default: this host's).

    Returns:
        The module.

    Raises:
        EngineLoadError: no usable GPU (with the probe's reason), or TensorRT is not installed.
    """
    probe = probe or probe_gpus()
    if not probe.available:
        raise EngineLoadError(f"TensorRT needs a GPU: {probe.reason}")
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineLoadError(
            f"TensorRT is not installed ({exc}); install NVIDIA's tensorrt wheel for this CUDA version"
        ) from exc
    module: ModuleType = tensorrt
    return module


def make_logger(trt: ModuleType) -> Any:
    """One process-wide ``trt.ILogger`` that forwards to logging and records errors.

    Its ``errors`` list collects every ERROR/INTERNAL_ERROR message; callers clear
    it before a TensorRT call and read it after a failure.
    """
    global _logger
    with _logger_lock:
        if _logger is not None:
            return _logger
        severity = trt.ILogger.Severity

        class RecordingLogger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, level: Any, msg: str) -> None:
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif level == severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _logger = RecordingLogger()
        return _logger


def logged_errors(logger: Any) -> str:
    errors: list[str] = getattr(logger, "errors", [])
    return "; ".join(errors[-3:]) if errors else "no error logged"

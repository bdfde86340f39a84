"""Import TensorRT only after a positive GPU probe, with a logger that keeps its errors.

Without a driver, TensorRT's constructors misbehave instead of raising
(``trt.Builder`` -> "factory function returned nullptr"; the lean
``trt.Runtime`` logs error 35 and returns an object that segfaults on use), so
``load_tensorrt`` refuses to import it unless ``probe_gpus()`` found a device,
and every TensorRT object is created with a ``RecordingLogger`` whose errors
are checked and put into our messages.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..base import EngineLoadError
from ..devices import GpuProbe, probe_gpus

__all__ = [
    "LogSink",
    "TrtDistribution",
    "find_distribution",
    "installed_tensorrt",
    "installed_tensorrt_version",
    "load_tensorrt",
    "logged_errors",
    "make_logger",
]

log = logging.getLogger("tensorgate.engines.tensorrt")

_CUDA_TAGGED = re.compile(r"^tensorrt-cu(\d+)(?:-libs|-bindings)?$")
_logger_lock = threading.Lock()
_logger: Any = None

# trt.ILogger.Severity values (NvInferRuntimeBase.h): INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


@dataclass(frozen=True)
class TrtDistribution:
    """The installed TensorRT as a plan depends on it: which build (CUDA major) and which version.

    cu12 and cu13 builds share ``trt.__version__``, and the CUDA a plan's kernels
    were compiled for is TensorRT's, not cuda-bindings' (which may be newer): the
    wheel's name says it (``tensorrt-cu13-libs``).

    Args:
        name: the distribution that says the CUDA major ("tensorrt-cu13-libs"), or "tensorrt".
        version: its version.
        cuda_major: the CUDA major TensorRT was built for (0: the distribution does not say).
    """

    name: str
    version: str
    cuda_major: int

    def key_fields(self) -> dict[str, Any]:
        return {"distribution": self.name, "version": self.version, "cuda_major": self.cuda_major}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_distribution(installed: Mapping[str, str]) -> TrtDistribution | None:
    """Which TensorRT build is installed, from distribution names and versions (plain data, no import).

    Args:
        installed: distribution name -> version (any spelling: "tensorrt_cu13_libs", "tensorrt-cu13").

    Returns:
        The build, preferring the libs wheel (it holds libnvinfer), or None when no TensorRT is installed.
    """
    normal = {_normal(k): v for k, v in installed.items()}
    tagged = []
    for name, version in normal.items():
        match = _CUDA_TAGGED.match(name)
        if match:
            rank = 0 if name.endswith("-libs") else 1 if not name.endswith("-bindings") else 2
            tagged.append((rank, name, version, int(match.group(1))))
    if tagged:
        _, name, version, major = min(tagged)
        return TrtDistribution(name, version, major)
    if "tensorrt" in normal:  # NVIDIA's tar/zip wheel: no CUDA tag in its name
        return TrtDistribution("tensorrt", normal["tensorrt"], 0)
    return None


def _installed_distributions() -> Iterable[tuple[str, str]]:
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if _normal(name).startswith("tensorrt"):
            yield name, dist.version


def installed_tensorrt() -> TrtDistribution | None:
    """The installed TensorRT build, from package metadata, without importing it (None: not installed)."""
    return find_distribution(dict(_installed_distributions()))


def installed_tensorrt_version() -> str | None:
    """TensorRT's version from package metadata, without importing it (None: not installed)."""
    dist = installed_tensorrt()
    return dist.version if dist is not None else None


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


class LogSink:
    """What a TensorRT logger does with a message, apart from TensorRT (tested with plain data).

    Messages below ``min_severity`` return at the first comparison: a Python
    ``ILogger`` is called (with the GIL) for every message TensorRT emits, VERBOSE
    included, and has no way to tell TensorRT a threshold. Errors go to the
    captures open on the calling thread (TensorRT logs on the thread that made
    the call), so each call reads its own errors and nothing accumulates.
    """

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity
        self._local = threading.local()

    def emit(self, severity: int, msg: str) -> None:
        if severity > self.min_severity:
            return
        if severity <= ERROR:
            for errors in getattr(self._local, "captures", ()):
                errors.append(msg)
            log.error("TensorRT: %s", msg.replace("\n", " "))
        elif severity == WARNING:
            log.warning("TensorRT: %s", msg.replace("\n", " "))
        else:
            log.debug("TensorRT: %s", msg.replace("\n", " "))

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect the errors TensorRT logs on this thread while the block runs."""
        errors: list[str] = []
        stack: list[list[str]] = getattr(self._local, "captures", None) or []
        self._local.captures = [*stack, errors]
        try:
            yield errors
        finally:
            self._local.captures = stack


def make_logger(trt: ModuleType) -> Any:
    """One process-wide ``trt.ILogger`` (TensorRT keeps a pointer to it) over a ``LogSink``.

    Callers wrap each TensorRT call that may fail in ``logger.sink.capture()``.
    """
    global _logger
    with _logger_lock:
        if _logger is not None:
            return _logger
        debug = log.isEnabledFor(logging.DEBUG)
        sink = LogSink(INFO if debug else WARNING)

        class RecordingLogger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.sink = sink

            def log(self, severity: Any, msg: str) -> None:
                sink.emit(int(severity), msg)

        _logger = RecordingLogger()
        return _logger


def logged_errors(errors: list[str]) -> str:
    """The last errors of one capture, for a message."""
    return "; ".join(errors[-3:]) if errors else "no error logged"

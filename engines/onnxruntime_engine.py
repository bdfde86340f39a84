"""The ONNX Runtime engine (CPU execution provider).

Each instance owns its own ``InferenceSession``: ``run`` releases the GIL, so
instances in separate threads really overlap, and per-thread sessions beat a
shared one at small batches (onnxruntime#27089). Session construction holds
the GIL and is not thread-safe (onnxruntime#27063/#27089), so sessions are
created one at a time under a module lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from .base import Arrays, EngineLoadError, EngineRunError, TensorSpec

__all__ = ["OnnxRuntimeEngine", "OnnxRuntimeInstance", "OrtOptions", "default_intra_op_threads"]

_SESSION_LOCK = threading.Lock()

# ONNX tensor element types as ORT names them -> v2 datatype
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

_GRAPH_LEVELS = {
    # Triton's ORT backend mapping of optimization.graph.level
    -1: "ORT_ENABLE_BASIC",
    0: "ORT_ENABLE_ALL",
    1: "ORT_ENABLE_EXTENDED",
    2: "ORT_DISABLE_ALL",
}


def default_intra_op_threads(instance_count: int) -> int:
    """Split the host's cores among instances, keeping one for the gRPC front end.

    A Python gRPC server spends a core's worth of CPU on its event loop and
    pollers; ORT threads that take every core fight it for the CPU (and with
    spinning off, each batch pays thread wake-ups), which measured slower on
    small hosts than fewer ORT threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cores - 1) // max(1, instance_count))


@dataclass(frozen=True)
class OrtOptions:
    """Session settings, named after Triton's ORT backend keys where one exists.

    Args:
        intra_op_threads: threads inside one operator (0 = ORT's default: all cores).
        inter_op_threads: threads across operators (used only in parallel mode).
        graph_level: Triton's optimization.graph.level (-1 basic, 0 all, 1 extended, 2 off).
        allow_spinning: let idle ORT threads spin; costs CPU the gRPC threads need on small hosts.
        enable_mem_arena: ORT's CPU memory arena.
        optimized_model_path: where ORT writes the optimized graph (the CPU engine cache).
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_level: int = 0
    allow_spinning: bool = False
    enable_mem_arena: bool = True
    optimized_model_path: str | None = None


def _datatype(ort_type: str, where: str) -> str:
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise EngineLoadError(f"{where} has type {ort_type}, which tensorgate cannot serve") from None


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    # ORT reports symbolic or unknown dims as str/None: both are variable (-1)
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxRuntimeInstance:
    """One InferenceSession, run by one worker thread at a time."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        try:
            results = self._session.run(list(output_names), dict(inputs))
        except Exception as exc:  # ORT raises its own exception classes
            raise EngineRunError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(output_names, results, strict=True))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeEngine:
    """An ONNX model loaded into ONNX Runtime's CPU execution provider."""

    kind = "onnxruntime"

    def __init__(self, model_path: Path, options: OrtOptions | None = None) -> None:
        self._path = Path(model_path)
        self._options = options or OrtOptions()
        self._spare: Any = self._new_session()  # also used for inspection
        self._inputs = [
            TensorSpec(i.name, _datatype(i.type, f"input {i.name}"), _dims(i.shape))
            for i in self._spare.get_inputs()
        ]
        self._outputs = [
            TensorSpec(o.name, _datatype(o.type, f"output {o.name}"), _dims(o.shape))
            for o in self._spare.get_outputs()
        ]

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def options(self) -> OrtOptions:
        return self._options

    def create_instance(self) -> OnnxRuntimeInstance:
        # the first instance takes the session made for inspection
        session = self._spare if self._spare is not None else self._new_session()
        self._spare = None
        return OnnxRuntimeInstance(session)

    def close(self) -> None:
        self._spare = None

    def _new_session(self) -> Any:
        import onnxruntime as ort  # imported lazily: the client side never needs it

        opts = self._options
        so = ort.SessionOptions()
        so.intra_op_num_threads = opts.intra_op_threads
        so.inter_op_num_threads = opts.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _GRAPH_LEVELS.get(opts.graph_level, "ORT_ENABLE_ALL")
        )
        so.enable_cpu_mem_arena = opts.enable_mem_arena
        so.log_severity_level = 3  # errors only; the server logs what matters
        spin = "1" if opts.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if opts.optimized_model_path:
            so.optimized_model_filepath = opts.optimized_model_path
        try:
            with _SESSION_LOCK:
                return ort.InferenceSession(str(self._path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineLoadError(f"onnxruntime cannot load {self._path.name}: {exc}") from exc

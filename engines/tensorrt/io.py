"""An engine's I/O tensors as plain data, and what tensorgate can serve of them.

``trt.nptype`` raises ``TypeError`` for BF16, FP8, INT4 and FP4 (numpy has no
such types), and a shape tensor (``ICudaEngine.is_shape_inference_io``) lives
in host memory, so giving it a device address would be wrong. Both are refused
here, at load, with the tensor's name, from facts read off the engine once:
the rules are pure and tested without TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import EngineLoadError

__all__ = ["IoTensor", "check_io", "numpy_dtype", "read_io"]

# trt.DataType names numpy can hold; the others (BF16, FP8, INT4, FP4, ...) have no numpy type
_NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class IoTensor:
    """One I/O tensor as the engine describes it.

    Args:
        name: tensor name.
        is_input: ``get_tensor_mode(name) == TensorIOMode.INPUT``.
        dtype_name: ``get_tensor_dtype(name).name`` ("FLOAT", "HALF", "BF16", ...).
        shape: ``get_tensor_shape(name)`` (-1 for dynamic dims).
        is_shape_tensor: ``is_shape_inference_io(name)``.
    """

    name: str
    is_input: bool
    dtype_name: str
    shape: tuple[int, ...]
    is_shape_tensor: bool = False


def numpy_dtype(dtype_name: str, tensor: str) -> np.dtype[Any]:
    """The numpy dtype of a TensorRT ``DataType`` name.

    Raises:
        EngineLoadError: the type has no numpy equivalent (BF16, FP8, INT4, FP4, ...).
    """
    try:
        return np.dtype(_NUMPY[dtype_name])
    except KeyError:
        raise EngineLoadError(
            f"tensor '{tensor}' has TensorRT type {dtype_name}, which tensorgate cannot serve: keep the model's "
            "inputs and outputs FP32, FP16, INT8, UINT8, INT32, INT64 or BOOL (cast inside the model)"
        ) from None


def check_io(tensors: Sequence[IoTensor]) -> dict[str, np.dtype[Any]]:
    """Refuse what cannot be served, and give each tensor's numpy dtype.

    Args:
        tensors: every I/O tensor of the engine.

    Returns:
        Tensor name -> numpy dtype.

    Raises:
        EngineLoadError: a shape tensor, or a type numpy cannot hold.
    """
    shape_tensors = [t.name for t in tensors if t.is_shape_tensor]
    if shape_tensors:
        raise EngineLoadError(
            f"the engine has shape tensor I/O {shape_tensors} (values that set shapes, kept in host memory): "
            "tensorgate serves execution tensors only; fold the shape into the model or make it a constant"
        )
    return {t.name: numpy_dtype(t.dtype_name, t.name) for t in tensors}


def read_io(trt: Any, engine: Any) -> list[IoTensor]:
    """The facts ``check_io`` needs, read once from an ``ICudaEngine``."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(IoTensor(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            dtype_name=str(engine.get_tensor_dtype(name).name),
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            is_shape_tensor=bool(engine.is_shape_inference_io(name)),
        ))
    return out

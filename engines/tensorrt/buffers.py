"""Buffer planning: one pinned host and one device buffer per I/O tensor, sized for the profile maximum.

Sizing for the maximum once means a batch never allocates on the hot path and
tensor addresses never change, so they are set on the execution context once.
The plan is pure (tested without a GPU); ``InstanceBuffers`` allocates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import EngineLoadError

__all__ = ["ALIGNMENT", "InstanceBuffers", "TensorPlan", "plan_buffers"]

ALIGNMENT = 256  # cudaMalloc's guarantee; TensorRT wants at least 16-byte aligned tensors


@dataclass(frozen=True)
class TensorPlan:
    """One I/O tensor's buffers.

    Args:
        name: tensor name.
        dtype: numpy dtype.
        max_shape: largest shape in the profile (outputs: what the engine reports at the input maxima).
        is_input: copied host -> device before a batch, else device -> host after.
        nbytes: bytes to allocate (max shape, rounded up to ``ALIGNMENT``).
    """

    name: str
    dtype: np.dtype[Any]
    max_shape: tuple[int, ...]
    is_input: bool
    nbytes: int

    def bytes_for(self, shape: Sequence[int]) -> int:
        return int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize


def plan_buffers(tensors: Sequence[tuple[str, np.dtype[Any], tuple[int, ...], bool]]) -> list[TensorPlan]:
    """Size every I/O tensor's buffers.

    Args:
        tensors: (name, numpy dtype, max shape, is_input) per tensor.

    Returns:
        The plan, in the given order.

    Raises:
        EngineLoadError: a shape still has a variable (data-dependent) dim.
    """
    plans = []
    for name, dtype, shape, is_input in tensors:
        if any(d < 0 for d in shape):
            raise EngineLoadError(
                f"tensor '{name}' has no upper bound at the profile maximum (shape {list(shape)}): "
                "data-dependent shapes are not supported"
            )
        raw = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        nbytes = max(ALIGNMENT, -(-raw // ALIGNMENT) * ALIGNMENT)
        plans.append(TensorPlan(name, np.dtype(dtype), tuple(shape), is_input, nbytes))
    return plans


class InstanceBuffers:
    """The allocated plan of one execution context (on the current device)."""

    def __init__(self, plans: Sequence[TensorPlan]) -> None:
        from .cuda import DeviceBuffer, HostBuffer

        self.plans = {p.name: p for p in plans}
        self.host: dict[str, HostBuffer] = {}
        self.device: dict[str, DeviceBuffer] = {}
        try:
            for plan in plans:
                self.host[plan.name] = HostBuffer(plan.nbytes)
                self.device[plan.name] = DeviceBuffer(plan.nbytes)
        except BaseException:
            self.free()
            raise

    @property
    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self.plans.values())

    def free(self) -> None:
        for host in self.host.values():
            host.free()
        for device in self.device.values():
            device.free()
        self.host.clear()
        self.device.clear()

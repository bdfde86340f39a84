"""The TensorRT engine: one deserialized plan per GPU, instances = execution contexts on their own streams.

An instance group ``{ kind: KIND_GPU, count: N, gpus: [0, 1] }`` becomes one
``ICudaEngine`` per listed GPU and N ``TensorRTInstance`` per GPU; each instance
owns an execution context, a CUDA stream and pinned host + device buffers sized
for the profile maximum (engines/tensorrt/buffers.py). A batch runs in the
instance's own thread as H2D copies, ``execute_async_v3``, D2H copies and one
stream sync; input shapes are set only when they change, tensor addresses once.
The scheduler treats these instances like the CPU ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..base import Arrays, EngineLoadError, EngineRunError, TensorSpec
from .buffers import InstanceBuffers, TensorPlan, plan_buffers
from .profiles import InputProfile

__all__ = ["TensorRTEngine", "TensorRTInstance", "v2_datatype"]

log = logging.getLogger("tensorgate.engines.tensorrt")

_V2 = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


def v2_datatype(dtype: np.dtype[Any], name: str) -> str:
    try:
        return _V2[np.dtype(dtype)]
    except KeyError:
        raise EngineLoadError(f"tensor '{name}' has type {dtype}, which tensorgate cannot serve") from None


class TensorRTInstance:
    """One execution context with its stream and buffers on one GPU."""

    def __init__(self, engine: Any, gpu: int, plans: Sequence[TensorPlan], profiles: Mapping[str, InputProfile],
                 logger: Any) -> None:
        from .cuda import Stream, set_device

        self.gpu = gpu
        self._logger = logger
        self._profiles = profiles
        set_device(gpu)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineLoadError(f"TensorRT could not create an execution context on GPU {gpu}")
        self._stream = Stream()
        self._buffers = InstanceBuffers(plans)
        self._inputs = [p for p in plans if p.is_input]
        self._plans = {p.name: p for p in plans}
        for plan in plans:  # buffers never move: addresses are set once
            if not self._context.set_tensor_address(plan.name, self._buffers.device[plan.name].ptr):
                raise EngineLoadError(f"TensorRT refused the address of tensor '{plan.name}'")
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._out_shapes: dict[str, tuple[int, ...]] = {}

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        from .cuda import CudaError, memcpy_d2h, memcpy_h2d, set_device
        from .runtime import logged_errors

        try:
            set_device(self.gpu)
            changed = False
            for plan in self._inputs:
                array = inputs[plan.name]
                shape = tuple(array.shape)
                profile = self._profiles.get(plan.name)
                if profile is not None and not profile.contains(shape):
                    raise EngineRunError(
                        f"input '{plan.name}' shape {list(shape)} is outside the engine's profile "
                        f"{list(profile.min)}..{list(profile.max)}"
                    )
                np.copyto(self._buffers.host[plan.name].view(plan.dtype, shape), array, casting="same_kind")
                memcpy_h2d(self._buffers.device[plan.name], self._buffers.host[plan.name], plan.bytes_for(shape),
                           self._stream)
                if self._shapes.get(plan.name) != shape:
                    if not self._context.set_input_shape(plan.name, shape):
                        raise EngineRunError(f"TensorRT refused input shape {list(shape)} for '{plan.name}'")
                    self._shapes[plan.name] = shape
                    changed = True
            if changed:
                self._out_shapes = {
                    name: tuple(self._context.get_tensor_shape(name))
                    for name, plan in self._plans.items() if not plan.is_input
                }
            if not self._context.execute_async_v3(self._stream.ptr):
                raise EngineRunError(f"TensorRT execute_async_v3 failed: {logged_errors(self._logger)}")
            for name in output_names:
                plan = self._plans[name]
                memcpy_d2h(self._buffers.host[name], self._buffers.device[name],
                           plan.bytes_for(self._out_shapes[name]), self._stream)
            self._stream.synchronize()
        except CudaError as exc:
            raise EngineRunError(str(exc)) from exc
        # copies: the pinned buffers are reused by the next batch while these results travel on
        return {
            name: self._buffers.host[name].view(self._plans[name].dtype, self._out_shapes[name]).copy()
            for name in output_names
        }

    def close(self) -> None:
        self._buffers.free()
        self._stream.free()
        self._context = None


class TensorRTEngine:
    """A plan deserialized on each of its GPUs; instances are spread round-robin over them."""

    kind = "tensorrt"

    def __init__(
        self, plans: Mapping[int, Path], profiles: Sequence[InputProfile], instance_gpus: Sequence[int] = ()
    ) -> None:
        """Deserialize one plan per GPU.

        Args:
            plans: GPU index -> plan file (identical GPUs may share a file).
            profiles: the profile the plans were built with.
            instance_gpus: the GPU of each instance in creation order (default: round-robin over ``plans``).

        Raises:
            EngineLoadError: a plan does not deserialize (stale, or built for another GPU or TensorRT).
        """
        from .cuda import set_device
        from .runtime import load_tensorrt, logged_errors, make_logger

        self._trt = load_tensorrt()
        self._logger = make_logger(self._trt)
        self._gpus = list(plans)
        self._instance_gpus = list(instance_gpus) or self._gpus
        self._profiles = {p.name: p for p in profiles}
        self._runtimes: dict[int, Any] = {}
        self._engines: dict[int, Any] = {}
        for gpu, path in plans.items():
            set_device(gpu)
            self._logger.errors.clear()
            runtime = self._trt.Runtime(self._logger)
            engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if engine is None:
                raise EngineLoadError(f"TensorRT cannot deserialize {Path(path).name} on GPU {gpu}: "
                                      f"{logged_errors(self._logger)}")
            self._runtimes[gpu], self._engines[gpu] = runtime, engine
        first = self._engines[self._gpus[0]]
        trt = self._trt
        names = [first.get_tensor_name(i) for i in range(first.num_io_tensors)]
        self._is_input = {n: first.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {n: np.dtype(trt.nptype(first.get_tensor_dtype(n))) for n in names}
        self._shapes = {n: tuple(int(d) for d in first.get_tensor_shape(n)) for n in names}
        self._plans = plan_buffers(self._tensor_maxima(first, names))
        self._count = 0

    def _tensor_maxima(self, engine: Any, names: list[str]) -> list[tuple[str, np.dtype[Any], tuple[int, ...], bool]]:
        """Every tensor's largest shape: inputs from the profile, outputs as a scratch context reports them."""
        maxima: dict[str, tuple[int, ...]] = {}
        for name in names:
            if self._is_input[name]:
                profile = self._profiles.get(name)
                shape = profile.max if profile is not None else engine.get_tensor_profile_shape(name, 0)[2]
                maxima[name] = tuple(int(d) for d in shape)
        scratch = engine.create_execution_context()
        try:
            for name, shape in maxima.items():
                if not scratch.set_input_shape(name, shape):
                    raise EngineLoadError(f"TensorRT refused the profile maximum {list(shape)} of '{name}'")
            for name in names:
                if not self._is_input[name]:
                    maxima[name] = tuple(int(d) for d in scratch.get_tensor_shape(name))
        finally:
            del scratch
        return [(n, self._dtypes[n], maxima[n], self._is_input[n]) for n in names]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, v2_datatype(self._dtypes[n], n), self._shapes[n]) for n in self._shapes
                if self._is_input[n]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, v2_datatype(self._dtypes[n], n), self._shapes[n]) for n in self._shapes
                if not self._is_input[n]]

    @property
    def buffer_plan(self) -> list[TensorPlan]:
        return list(self._plans)

    def create_instance(self) -> TensorRTInstance:
        gpu = self._instance_gpus[self._count % len(self._instance_gpus)]
        self._count += 1
        return TensorRTInstance(self._engines[gpu], gpu, self._plans, self._profiles, self._logger)

    def close(self) -> None:
        self._engines.clear()
        self._runtimes.clear()

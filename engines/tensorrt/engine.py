"""The TensorRT engine: one deserialized plan per GPU, instances = execution contexts on their own streams.

An instance group ``{ kind: KIND_GPU, count: N, gpus: [0, 1] }`` becomes one
``ICudaEngine`` per listed GPU and N ``TensorRTInstance`` per GPU; each instance
owns an execution context with its own optimization profile (concurrent
contexts must not share one), a CUDA stream and pinned host + device buffers
sized for the profile maximum (engines/tensorrt/buffers.py). A batch runs in the
instance's own thread as H2D copies, ``execute_async_v3``, D2H copies and one
stream sync; input shapes are set only when they change, tensor addresses once.
The scheduler treats these instances like the CPU ones. Every CUDA call on a
GPU's objects runs with that GPU current (``set_device`` first), and ``close``
synchronizes the stream before anything it used is freed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..base import Arrays, EngineLoadError, EngineRunError, TensorSpec
from .buffers import InstanceBuffers, TensorPlan, plan_buffers
from .io import check_io, read_io
from .profiles import InputProfile, assign_profiles

__all__ = ["StalePlanError", "TensorRTEngine", "TensorRTInstance", "load_with_rebuild", "v2_datatype"]

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


class StalePlanError(EngineLoadError):
    """A cached plan TensorRT will not deserialize here (another TensorRT build, driver or GPU)."""

    def __init__(self, message: str, gpu: int, path: Path) -> None:
        super().__init__(message)
        self.gpu = gpu
        self.path = path


P = TypeVar("P")
E = TypeVar("E")


def load_with_rebuild(prepare: Callable[[], P], load: Callable[[P], E],
                      discard: Callable[[P, StalePlanError], None]) -> E:
    """Prepare and load; when a plan does not deserialize, drop it, rebuild and load once more.

    Args:
        prepare: builds or finds the plans (the engine cache).
        load: deserializes them.
        discard: removes the stale plan's cache entry so the next ``prepare`` rebuilds it.

    Returns:
        The loaded engine.

    Raises:
        StalePlanError: the rebuilt plan does not deserialize either (nothing is retried twice).
    """
    prepared = prepare()
    try:
        return load(prepared)
    except StalePlanError as exc:
        log.warning("%s; dropping the cached plan and rebuilding it once", exc)
        discard(prepared, exc)
    return load(prepare())


class TensorRTInstance:
    """One execution context with its own optimization profile, stream and buffers on one GPU."""

    def __init__(self, engine: Any, gpu: int, profile_index: int, plans: Sequence[TensorPlan],
                 profiles: Mapping[str, InputProfile], logger: Any,
                 on_close: Callable[[tuple[int, int]], None] | None = None) -> None:
        from .cuda import Stream, set_device
        from .runtime import logged_errors

        self.gpu = gpu
        self.profile_index = profile_index
        self._logger = logger
        self._profiles = profiles
        self._on_close = on_close
        self._context: Any = None
        set_device(gpu)
        self._stream = Stream()
        self._buffers: InstanceBuffers | None = None
        try:
            with logger.sink.capture() as errors:
                self._context = engine.create_execution_context()
                if self._context is None:
                    raise EngineLoadError(f"TensorRT could not create an execution context on GPU {gpu}: "
                                          f"{logged_errors(errors)}")
                try:  # the binding raises RuntimeError where the C++ call returns false
                    selected = self._context.set_optimization_profile_async(profile_index, self._stream.ptr)
                except RuntimeError:
                    selected = False
                if not selected:
                    raise EngineLoadError(f"TensorRT refused optimization profile {profile_index} on GPU {gpu}: "
                                          f"{logged_errors(errors)}")
            self._buffers = InstanceBuffers(plans)
            for plan in plans:  # buffers never move: addresses are set once
                if not self._context.set_tensor_address(plan.name, self._buffers.device[plan.name].ptr):
                    raise EngineLoadError(f"TensorRT refused the address of tensor '{plan.name}'")
            self._stream.synchronize()  # the profile switch is done before the first batch
        except BaseException:
            self.close()
            raise
        self._inputs = [p for p in plans if p.is_input]
        self._plans = {p.name: p for p in plans}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._out_shapes: dict[str, tuple[int, ...]] = {}

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        from .cuda import CudaError, memcpy_d2h, memcpy_h2d, set_device
        from .runtime import logged_errors

        buffers = self._buffers
        if self._context is None or buffers is None:
            raise EngineRunError("the TensorRT instance is closed")
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
                np.copyto(buffers.host[plan.name].view(plan.dtype, shape), array, casting="same_kind")
                memcpy_h2d(buffers.device[plan.name], buffers.host[plan.name], plan.bytes_for(shape), self._stream)
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
            with self._logger.sink.capture() as errors:
                if not self._context.execute_async_v3(self._stream.ptr):
                    raise EngineRunError(f"TensorRT execute_async_v3 failed: {logged_errors(errors)}")
            for name in output_names:
                plan = self._plans[name]
                memcpy_d2h(buffers.host[name], buffers.device[name], plan.bytes_for(self._out_shapes[name]),
                           self._stream)
            self._stream.synchronize()
        except CudaError as exc:
            raise EngineRunError(str(exc)) from exc
        # copies: the pinned buffers are reused by the next batch while these results travel on
        return {
            name: buffers.host[name].view(self._plans[name].dtype, self._out_shapes[name]).copy()
            for name in output_names
        }

    def close(self) -> None:
        """Wait for the stream's work, then free: the context first, then its buffers, then the stream."""
        from .cuda import set_device

        if self._stream.handle is None:
            return
        try:
            set_device(self.gpu)
            self._stream.synchronize()
        finally:
            self._context = None
            if self._buffers is not None:
                self._buffers.free()
                self._buffers = None
            self._stream.free()
            if self._on_close is not None:
                self._on_close((self.gpu, self.profile_index))  # the profile is free for another context


class TensorRTEngine:
    """A plan deserialized on each of its GPUs; instances are spread over them, each with its own profile."""

    kind = "tensorrt"

    def __init__(
        self, plans: Mapping[int, Path], profiles: Sequence[InputProfile], instance_gpus: Sequence[int] = ()
    ) -> None:
        """Deserialize one plan per GPU.

        Args:
            plans: GPU index -> plan file (identical GPUs may share a file).
            profiles: the profile the plans were built with (one or more identical copies of it).
            instance_gpus: the GPU of each instance in creation order (default: one instance per GPU).

        Raises:
            StalePlanError: a plan does not deserialize (built for another TensorRT, driver or GPU).
            EngineLoadError: more instances on a GPU than the plan has profiles, or I/O tensorgate cannot serve.
        """
        from .cuda import set_device
        from .runtime import load_tensorrt, logged_errors, make_logger

        self._trt = load_tensorrt()
        self._logger = make_logger(self._trt)
        self._gpus = list(plans)
        self._profiles = {p.name: p for p in profiles}
        self._runtimes: dict[int, Any] = {}
        self._engines: dict[int, Any] = {}
        for gpu, path in plans.items():
            set_device(gpu)
            with self._logger.sink.capture() as errors:
                runtime = self._trt.Runtime(self._logger)
                engine = runtime.deserialize_cuda_engine(Path(path).read_bytes()) if runtime is not None else None
            if engine is None:
                raise StalePlanError(f"TensorRT cannot deserialize {Path(path).name} on GPU {gpu}: "
                                     f"{logged_errors(errors)}", gpu, Path(path))
            self._runtimes[gpu], self._engines[gpu] = runtime, engine
        first_gpu = self._gpus[0]
        first = self._engines[first_gpu]
        copies = min(int(e.num_optimization_profiles) for e in self._engines.values())
        self._assignment = assign_profiles(list(instance_gpus) or self._gpus, copies)
        io = read_io(self._trt, first)
        self._dtypes = check_io(io)
        self._is_input = {t.name: t.is_input for t in io}
        self._shapes = {t.name: t.shape for t in io}
        set_device(first_gpu)  # the scratch context below belongs to the first GPU's engine
        self._plans = plan_buffers(self._tensor_maxima(first, list(self._shapes)))
        self._count = 0
        self._released: list[tuple[int, int]] = []  # (gpu, profile) of closed instances

    def _tensor_maxima(self, engine: Any, names: list[str]) -> list[tuple[str, np.dtype[Any], tuple[int, ...], bool]]:
        """Every tensor's largest shape: inputs from the profile, outputs as a scratch context infers them.

        The scratch context gets no device memory of its own (USER_MANAGED): it only infers shapes.
        """
        from .runtime import logged_errors

        maxima: dict[str, tuple[int, ...]] = {}
        for name in names:
            if self._is_input[name]:
                profile = self._profiles.get(name)
                shape = profile.max if profile is not None else engine.get_tensor_profile_shape(name, 0)[2]
                maxima[name] = tuple(int(d) for d in shape)
        strategy = getattr(self._trt, "ExecutionContextAllocationStrategy", None)
        with self._logger.sink.capture() as errors:
            scratch = (engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
                       else engine.create_execution_context())
            if scratch is None:
                raise EngineLoadError(f"TensorRT could not create a context to size the outputs: "
                                      f"{logged_errors(errors)}")
            try:
                for name, shape in maxima.items():
                    if not scratch.set_input_shape(name, shape):
                        raise EngineLoadError(f"TensorRT refused the profile maximum {list(shape)} of '{name}': "
                                              f"{logged_errors(errors)}")
                try:
                    unresolved = list(scratch.infer_shapes())
                except RuntimeError as exc:  # a negative status from inferShapes
                    raise EngineLoadError(f"TensorRT cannot infer output shapes ({exc}): "
                                          f"{logged_errors(errors)}") from exc
                if unresolved:
                    raise EngineLoadError(f"TensorRT cannot infer output shapes; unresolved tensors {unresolved}: "
                                          f"{logged_errors(errors)}")
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
        """The next instance in ``instance_gpus`` order (or a closed one's slot), with its own profile.

        Raises:
            EngineLoadError: every planned instance is open (each profile is in use).
        """
        if self._released:
            gpu, profile = self._released.pop(0)
        elif self._count < len(self._assignment):
            gpu, profile = self._assignment[self._count]
            self._count += 1
        else:
            raise EngineLoadError(f"the engine was planned for {len(self._assignment)} instance(s), each with its "
                                  "own optimization profile; no profile is free for another")
        return TensorRTInstance(self._engines[gpu], gpu, profile, self._plans, self._profiles, self._logger,
                                self._released.append)

    def close(self) -> None:
        """Drop each GPU's engine, then its runtime, with that GPU current (instances are closed first)."""
        from .cuda import set_device

        for gpu in list(self._engines):
            set_device(gpu)
            self._engines.pop(gpu, None)
            self._runtimes.pop(gpu, None)
        self._runtimes.clear()

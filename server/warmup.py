"""Model warm-up before READY, with Triton's ``model_warmup`` semantics.

Each ``model_warmup`` entry is a request (``batch_size`` rows of the given
inputs: ``zero_data``, ``random_data`` or ``input_data_file``, a raw file in
``<model>/warmup/``) that runs ``count`` times (0 means once) on every
instance, before the version turns READY; a failure fails the load with the
reason. The first real request then finds caches, arenas and lazy
allocations already warm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import CodecError, config_dtype_to_datatype, raw_to_numpy
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import EngineInstance

from .errors import LoadError
from .names import is_valid_model_name

if TYPE_CHECKING:
    from .model_version import ModelVersion, TensorInfo

__all__ = ["WARMUP_FOLDER", "run_warmup"]

log = logging.getLogger("tensorgate.warmup")

WARMUP_FOLDER = "warmup"  # Triton's folder for input_data_file, inside the model folder
_MAX_WARMUP_BYTES = 1 << 30  # one sample's bound: a config must not make the server allocate without limit


def _bad(warmup: mc.ModelWarmup, message: str) -> LoadError:
    return LoadError(f"model_warmup '{warmup.name}': {message}")


def _sample(mv: ModelVersion, warmup: mc.ModelWarmup, name: str, spec: mc.ModelWarmup.Input,
            info: TensorInfo, rng: np.random.Generator) -> npt.NDArray[Any]:
    """One input's data for a single row (the batch axis is added by the caller)."""
    datatype = config_dtype_to_datatype(spec.data_type) if spec.data_type else info.datatype
    if datatype != info.datatype:
        raise _bad(warmup, f"input '{name}' is {datatype}, the model expects {info.datatype}")
    dims = tuple(int(d) for d in spec.dims)
    if any(d < 0 for d in dims):
        raise _bad(warmup, f"input '{name}' needs concrete dims, got {list(dims)}")
    rank, fixed = mv.shape_checks[name]
    offset = 1 if mv.batching else 0
    if len(dims) + offset != rank or any(dims[axis - offset] != d for axis, d in fixed):
        raise _bad(warmup, f"input '{name}' dims {list(dims)} do not match the config's {list(info.dims)}")
    count = math.prod(dims)
    if count * max(info.element_size, 1) > _MAX_WARMUP_BYTES:
        raise _bad(warmup, f"input '{name}' is larger than {_MAX_WARMUP_BYTES} bytes")
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        filename = spec.input_data_file
        if not is_valid_model_name(filename):
            raise _bad(warmup, f"input_data_file {filename[:80]!r} must be a plain file name")
        path = mv.path / WARMUP_FOLDER / filename
        if not path.is_file():
            raise _bad(warmup, f"input '{name}': no file {WARMUP_FOLDER}/{filename} in the model folder")
        if path.stat().st_size > _MAX_WARMUP_BYTES:
            raise _bad(warmup, f"input '{name}': {WARMUP_FOLDER}/{filename} is too large")
        try:
            return raw_to_numpy(path.read_bytes(), datatype, dims)
        except CodecError as exc:
            raise _bad(warmup, f"input '{name}': {WARMUP_FOLDER}/{filename}: {exc}") from exc
    if datatype == "BYTES":
        fill = b"" if kind != "random_data" else b"warmup"
        return np.full(dims, fill, dtype=np.object_)
    if kind == "random_data":
        if info.np_dtype == np.bool_:
            return rng.integers(0, 2, size=dims).astype(np.bool_)
        if np.issubdtype(info.np_dtype, np.integer):
            return rng.integers(0, 8, size=dims).astype(info.np_dtype)
        return rng.random(size=dims).astype(info.np_dtype)
    if kind != "zero_data":
        raise _bad(warmup, f"input '{name}' sets none of zero_data, random_data, input_data_file")
    return np.zeros(dims, dtype=info.np_dtype)


def _inputs(mv: ModelVersion, warmup: mc.ModelWarmup, rng: np.random.Generator) -> dict[str, npt.NDArray[Any]]:
    unknown = sorted(set(warmup.inputs) - set(mv.inputs))
    if unknown:
        raise _bad(warmup, f"unknown input(s) {unknown}; the model has {list(mv.inputs)}")
    missing = [n for n, info in mv.inputs.items() if n not in warmup.inputs and not info.optional]
    if missing:
        raise _bad(warmup, f"input(s) {missing} are not given")
    batch = int(warmup.batch_size)
    if mv.batching and not 1 <= batch <= mv.max_batch_size:
        raise _bad(warmup, f"batch_size {batch} must be between 1 and max_batch_size {mv.max_batch_size}")
    if not mv.batching and batch > 1:
        raise _bad(warmup, f"batch_size {batch}: the model does not batch (max_batch_size 0)")
    arrays = {}
    for name, spec in warmup.inputs.items():
        sample = _sample(mv, warmup, name, spec, mv.inputs[name], rng)
        if mv.batching:
            sample = np.ascontiguousarray(np.broadcast_to(sample, (batch, *sample.shape)))
        arrays[name] = sample
    return arrays


def run_warmup(mv: ModelVersion, instances: Sequence[EngineInstance]) -> int:
    """Run every warm-up of the config on every instance; returns the runs made, raises LoadError."""
    runs = 0
    outputs = list(mv.outputs)
    rng = np.random.default_rng(0)
    for warmup in mv.config.model_warmup:
        inputs = _inputs(mv, warmup, rng)
        repeat = max(1, int(warmup.count))
        for instance in instances:
            for _ in range(repeat):
                try:
                    instance.run(inputs, outputs)
                except Exception as exc:  # the load fails with the reason; the log keeps the trace
                    log.debug("warm-up %s of %s failed", warmup.name, mv.name, exc_info=True)
                    raise _bad(warmup, f"the model failed to run it: {type(exc).__name__}: {exc}") from exc
                runs += 1
        log.info("model %s version %d: warm-up '%s' ran %d time(s) on %d instance(s)", mv.name, mv.version,
                 warmup.name, repeat, len(instances))
    return runs


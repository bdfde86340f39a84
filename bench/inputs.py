"""The model's inputs as the server describes them, and the requests bench sends, built once.

Shapes come from ModelMetadata and ModelConfig, as perf_analyzer reads them: when ``max_batch_size > 0`` the
metadata's first dim is the batch dim and is replaced by ``-b``; other ``-1`` dims need ``--shape``. A
server without ModelConfig (KServe, MLServer) is read from metadata alone: a leading -1 is taken as the
batch dim. Each distinct request is serialized once; the hot path only sends the bytes.

Data: ``random`` (uniform [0, 1) floats, integers in [0, 100) clipped to the type, random strings for
BYTES), ``zero``, or a file: ``.npz`` (one array per input name: one request) or perf_analyzer's JSON
(``{"data": [{"INPUT0": [..] or {"content": [..], "shape": [..]}}, ...]}``: one request per entry, sent in
turn). An array without the batch dim is repeated ``-b`` times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients import (
    AsyncInferenceClient,
    InferenceServerError,
    datatype_to_numpy,
    element_size,
    numpy_to_raw,
)
from tensorgate.clients.pb import grpc_service_pb2 as pb

from .shm import RegionPlan

__all__ = ["BenchRequest", "ModelInfo", "TensorSpec", "build_requests", "discover_model", "parse_shapes"]


@dataclass(frozen=True)
class TensorSpec:
    """One model input: dims exclude the batch dim when the model batches."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What bench needs to know about the model (max_batch_size None: the server has no ModelConfig)."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int | None
    batching: bool
    decoupled: bool = False


@dataclass(frozen=True)
class BenchRequest:
    """A serialized ModelInferRequest and the number of rows (inferences) it carries."""

    payload: bytes
    rows: int
    size: int


async def discover_model(client: AsyncInferenceClient, model: str, version: str = "") -> ModelInfo:
    """Read ModelMetadata (required) and ModelConfig (when the server has it)."""
    metadata = await client.get_model_metadata(model, version)
    config = None
    try:
        config = (await client.get_model_config(model, version)).config
    except InferenceServerError:
        pass
    if config is not None:
        max_batch: int | None = int(config.max_batch_size)
        batching = config.max_batch_size > 0
        optional = {i.name for i in config.input if i.optional}
        decoupled = bool(config.model_transaction_policy.decoupled)
    else:
        max_batch, optional, decoupled = None, set(), False
        batching = bool(metadata.inputs) and all(t.shape[:1] == [-1] for t in metadata.inputs)

    def specs(tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in (t.shape[1:] if batching else t.shape)),
                                t.name in optional) for t in tensors)

    return ModelInfo(model, version, specs(metadata.inputs), specs(metadata.outputs), max_batch, batching, decoupled)


def parse_shapes(items: Sequence[str]) -> dict[str, list[int]]:
    """``NAME:d1,d2`` (perf_analyzer's --shape) -> {NAME: [d1, d2]}."""
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {item!r}: expected NAME:d1,d2,...")
        out[name] = [int(d) for d in dims.split(",") if d.strip()]
    return out


def _dims(spec: TensorSpec, shapes: Mapping[str, list[int]]) -> list[int]:
    dims = list(shapes.get(spec.name, spec.dims))
    if len(dims) != len(spec.dims) or any(d < 0 for d in dims):
        raise ValueError(f"input {spec.name!r} has dims {list(spec.dims)}: give its shape with "
                         f"--shape {spec.name}:{','.join(str(d if d > 0 else 1) for d in spec.dims)}")
    return dims


def _generate(datatype: str, shape: list[int], kind: str, rng: np.random.Generator,
              string_length: int) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        count = int(np.prod(shape, dtype=np.int64))
        if kind == "zero":
            return np.full(shape, b"0" * string_length, dtype=object)
        letters = rng.integers(97, 123, size=(count, string_length), dtype=np.uint8)
        return np.array([row.tobytes() for row in letters], dtype=object).reshape(shape)
    dtype: Any = np.dtype(np.float32) if datatype == "BF16" else datatype_to_numpy(datatype)
    if kind == "zero":
        return np.zeros(shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating):
        return rng.random(size=shape, dtype=np.float64).astype(dtype)
    high = min(100, int(np.iinfo(dtype).max))
    return rng.integers(0, high, size=shape).astype(dtype)


def _file_requests(path: Path) -> list[dict[str, npt.NDArray[Any] | list[Any]]]:
    """Each entry maps input names to an array, or (JSON) to a flat list to be shaped later."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return [{name: np.asarray(data[name]) for name in data.files}]
    document = json.loads(path.read_text())
    entries = document["data"] if isinstance(document, dict) else document
    out: list[dict[str, npt.NDArray[Any] | list[Any]]] = []
    for entry in entries:
        tensors: dict[str, npt.NDArray[Any] | list[Any]] = {}
        for name, value in entry.items():
            if isinstance(value, dict):
                tensors[name] = np.asarray(value["content"]).reshape(value["shape"])
            else:
                tensors[name] = list(value)
        out.append(tensors)
    return out


def _from_file(spec: TensorSpec, value: npt.NDArray[Any] | list[Any], shapes: Mapping[str, list[int]],
               batch: int, batching: bool) -> npt.NDArray[Any]:
    """A file's value for one input as the request tensor: flat lists take the model's dims."""
    dtype: Any = object if spec.datatype == "BYTES" else (
        np.float32 if spec.datatype == "BF16" else datatype_to_numpy(spec.datatype))
    if isinstance(value, list):
        flat = [v.encode() if isinstance(v, str) else v for v in value] if spec.datatype == "BYTES" else value
        array = np.asarray(flat, dtype=dtype).reshape(_dims(spec, shapes))
    else:
        array = value if value.dtype == dtype else value.astype(dtype)
    if batching and array.ndim == len(spec.dims):  # one row: repeat it -b times
        array = np.repeat(array[np.newaxis], batch, axis=0)
    return array


def _output_sizes(model: ModelInfo, rows: int) -> list[tuple[str, int]]:
    """Each output's byte size for `rows` rows; empty when any is unknown (variable dims, BYTES)."""
    out = []
    for spec in model.outputs:
        if spec.datatype == "BYTES" or any(d < 0 for d in spec.dims):
            return []
        count = int(np.prod(spec.dims, dtype=np.int64)) * (rows if model.batching else 1)
        out.append((spec.name, count * element_size(spec.datatype)))
    return out


def build_requests(model: ModelInfo, *, batch_size: int = 1, data: str = "random",
                   shapes: Mapping[str, list[int]] | None = None, string_length: int = 16,
                   seed: int = 0, shm: RegionPlan | None = None) -> list[BenchRequest]:
    """The distinct requests of a run, serialized (one for generated data; one per file entry).

    With `shm`, input bytes go to its region instead of the message (and outputs too, when their
    sizes are known).

    Raises:
        ValueError: a variable dim without --shape, a batch size the model cannot take, or data that
            does not fit the model.
    """
    if not model.batching and batch_size != 1:
        raise ValueError(f"model {model.name!r} does not batch (max_batch_size 0): -b must be 1")
    if model.max_batch_size and batch_size > model.max_batch_size:
        raise ValueError(f"-b {batch_size} exceeds the model's max_batch_size {model.max_batch_size}")
    shapes = shapes or {}
    rng = np.random.default_rng(seed)
    if data in ("random", "zero"):
        entries: list[dict[str, npt.NDArray[Any] | list[Any]]] = [{}]
    else:
        entries = _file_requests(Path(data))
    requests = []
    for entry in entries:
        message = pb.ModelInferRequest(model_name=model.name, model_version=model.version)
        rows = batch_size if model.batching else 1
        for spec in model.inputs:
            if spec.name in entry:
                array = _from_file(spec, entry[spec.name], shapes, batch_size, model.batching)
                if model.batching:
                    rows = int(array.shape[0])
            elif data not in ("random", "zero"):
                if spec.optional:
                    continue
                raise ValueError(f"{data}: no data for input {spec.name!r}")
            else:
                dims = _dims(spec, shapes)
                shape = [batch_size, *dims] if model.batching else dims
                array = _generate(spec.datatype, shape, data, rng, string_length)
            tensor = message.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
            if shm is None:
                message.raw_input_contents.append(numpy_to_raw(array, spec.datatype))
            else:
                shm.add_input(tensor, numpy_to_raw(array, spec.datatype))
        sizes = _output_sizes(model, rows)
        if shm is not None and sizes:
            shm.add_outputs(message, sizes)
        payload = message.SerializeToString()
        requests.append(BenchRequest(payload, rows, len(payload)))
    return requests

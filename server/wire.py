"""ModelInferRequest -> InferRequest (checked), and InferRequest -> ModelInferResponse.

Protobuf in, numpy views out: raw_input_contents become ``np.frombuffer``
views without a copy, typed contents are the slow path. Every check raises
InvalidArgumentError with a message naming the model, the tensor and what was
expected (protocol.md section 1.3 has the wire rules). No gRPC here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import CodecError, contents_to_numpy, numpy_to_raw, raw_to_numpy
from tensorgate.clients.pb import grpc_service_pb2 as pb

from .errors import InvalidArgumentError
from .request import InferRequest, RequestedOutput

if TYPE_CHECKING:
    from .model import ModelVersion, TensorInfo

__all__ = ["TRITON_ACCEPTED_PARAMETERS", "decode_request", "encode_response"]

# `triton_`-prefixed request parameters Triton accepts; any other such key is reserved
TRITON_ACCEPTED_PARAMETERS = frozenset({"triton_enable_empty_final_response"})
_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_IGNORED_PARAMETERS = frozenset({"binary_data_output", "headers", "binary_data", "binary_data_size"})


def _bad(model: ModelVersion, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"model '{model.name}' version {model.version}: {message}")


def _check_shape(model: ModelVersion, info: TensorInfo, shape: tuple[int, ...]) -> int:
    """Check a request shape against the config; returns its batch size (1 when not batching)."""
    rank, fixed = model.shape_checks[info.name]
    ok = len(shape) == rank and (not shape or min(shape) >= 0)
    if ok:
        for axis, dim in fixed:
            if shape[axis] != dim:
                ok = False
                break
    if not ok:
        expected = info.wire_shape(model.batching)
        raise _bad(model, f"input '{info.name}' has shape {list(shape)}, expected {expected}")
    if not model.batching:
        return 1
    batch = shape[0]
    if batch > model.max_batch_size:
        raise _bad(
            model,
            f"input '{info.name}' has batch size {batch}, more than max_batch_size {model.max_batch_size}",
        )
    return batch


def _int_parameter(model: ModelVersion, key: str, param: pb.InferParameter, signed_ok: bool) -> int:
    which = param.WhichOneof("parameter_choice")
    if which == "int64_param" and signed_ok:
        if param.int64_param < 0:
            raise _bad(model, f"parameter '{key}' must be >= 0, got {param.int64_param}")
        return param.int64_param
    if which == "uint64_param":
        return param.uint64_param
    raise _bad(model, f"parameter '{key}' must be an int64 or uint64 value, got {which or 'nothing'}")


def _apply_parameters(model: ModelVersion, request: pb.ModelInferRequest, out: InferRequest) -> None:
    for key, param in request.parameters.items():
        which = param.WhichOneof("parameter_choice")
        if key == "priority":
            out.priority = _int_parameter(model, key, param, signed_ok=True)
        elif key == "timeout":
            if which != "int64_param" or param.int64_param < 0:
                raise _bad(model, "parameter 'timeout' must be a non-negative int64 (microseconds)")
            out.timeout_us = param.int64_param
        elif key == "sequence_id":
            if which not in ("int64_param", "uint64_param", "string_param"):
                raise _bad(model, "parameter 'sequence_id' must be an int64 or string value")
        elif key in ("sequence_start", "sequence_end"):
            if which != "bool_param":
                raise _bad(model, f"parameter '{key}' must be a bool value")
        elif key.startswith("triton_"):
            if key not in TRITON_ACCEPTED_PARAMETERS:
                raise _bad(model, f"parameter keys starting with 'triton_' are reserved; '{key}' is not accepted")
        elif key not in _IGNORED_PARAMETERS:
            out.parameters[key] = getattr(param, which) if which else None


def _requested_outputs(model: ModelVersion, request: pb.ModelInferRequest) -> list[RequestedOutput]:
    if not request.outputs:
        return [RequestedOutput(name, 0) for name in model.outputs]
    wanted: list[RequestedOutput] = []
    seen: set[str] = set()
    for out in request.outputs:
        if out.name not in model.outputs:
            raise _bad(model, f"unknown requested output '{out.name}'; the model has {list(model.outputs)}")
        if out.name in seen:
            raise _bad(model, f"output '{out.name}' is requested twice")
        seen.add(out.name)
        k = 0
        params = out.parameters
        if params:
            if any(key in params for key in _SHM_KEYS):
                raise _bad(model, f"output '{out.name}': shared memory is not supported by this server")
            if "classification" in params:
                k = _int_parameter(model, "classification", params["classification"], signed_ok=True)
        wanted.append(RequestedOutput(out.name, k))
    return wanted


def decode_request(model: ModelVersion, request: pb.ModelInferRequest, now_ns: int) -> InferRequest:
    """Check a ModelInferRequest against the model and turn it into an InferRequest."""
    tensors = request.inputs
    if not tensors:
        raise _bad(model, f"the request has no inputs; expected {list(model.inputs)}")
    raw = request.raw_input_contents
    raw_count = len(raw)
    raw_used = 0
    arrays: dict[str, npt.NDArray[Any]] = {}
    batch_size = -1
    for tensor in tensors:
        name = tensor.name
        info = model.inputs.get(name)
        if info is None:
            raise _bad(model, f"unknown input '{name}'; the model has {list(model.inputs)}")
        if name in arrays:
            raise _bad(model, f"input '{name}' is given twice")
        if tensor.datatype != info.datatype:
            raise _bad(model, f"input '{name}' has datatype {tensor.datatype}, expected {info.datatype}")
        if tensor.parameters and any(key in tensor.parameters for key in _SHM_KEYS):
            raise _bad(model, f"input '{name}': shared memory is not supported by this server")
        shape = tuple(tensor.shape)
        rows = _check_shape(model, info, shape)
        if batch_size == -1:
            batch_size = rows
        elif rows != batch_size:
            raise _bad(model, f"input '{name}' has batch size {rows}, other inputs have {batch_size}")
        try:
            if tensor.HasField("contents"):
                if raw_count:
                    raise _bad(
                        model,
                        f"input '{name}' has typed contents while the request also has "
                        "raw_input_contents; use one or the other",
                    )
                array = contents_to_numpy(tensor.contents, info.datatype, shape)
            else:
                if raw_used >= raw_count:
                    raise _bad(
                        model,
                        f"input '{name}' has no data: the request has {raw_count} raw_input_contents "
                        f"entries for {len(tensors)} inputs",
                    )
                data = raw[raw_used]
                raw_used += 1
                size = info.element_size
                if size and info.datatype != "BF16" and len(data) == math.prod(shape) * size:
                    array = np.frombuffer(data, dtype=info.np_dtype).reshape(shape)  # the fast path
                else:
                    array = raw_to_numpy(data, info.datatype, shape)  # BYTES, BF16, or a size error
        except CodecError as exc:
            raise _bad(model, f"input '{name}': {exc}") from None
        if info.reshape is not None:
            array = array.reshape(((rows,) if model.batching else ()) + info.reshape)
        arrays[name] = array
    if raw_used != raw_count:
        raise _bad(
            model,
            f"the request has {raw_count} raw_input_contents entries but {raw_used} inputs take raw data",
        )
    if len(arrays) != len(model.inputs):
        missing = [n for n, info in model.inputs.items() if n not in arrays and not info.optional]
        if missing:
            raise _bad(model, f"missing input(s) {missing}; the model needs {list(model.inputs)}")
    merge_key = tuple((n, a.shape[1:]) for n, a in arrays.items()) if model.batching else ()
    out = InferRequest(
        model, request.id, arrays, _requested_outputs(model, request), batch_size, merge_key, now_ns
    )
    if request.parameters:
        _apply_parameters(model, request, out)
    return out


def _classify(values: npt.NDArray[Any], k: int, labels: list[str] | None, batching: bool) -> npt.NDArray[Any]:
    """Top-k per batch row as Triton's "value:index[:label]" strings."""
    rows = values.reshape(values.shape[0], -1) if batching else values.reshape(1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(top.shape, dtype=np.object_)
    for r in range(top.shape[0]):
        for c in range(k):
            index = int(top[r, c])
            text = f"{float(rows[r, index]):f}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode("utf-8")
    return out if batching else out.reshape(k)


def encode_response(request: InferRequest) -> pb.ModelInferResponse:
    """Build the response: one raw_output_contents entry per output, in request order."""
    model = request.model
    results = request.outputs
    assert results is not None
    tensors = []
    raws = []
    for name, k in request.requested:
        info = model.outputs[name]
        array = results[name]
        if info.reshape is not None:
            array = array.reshape(((array.shape[0],) if model.batching else ()) + info.dims)
        datatype = info.datatype
        if k:
            array = _classify(array, k, model.labels.get(name), model.batching)
            datatype = "BYTES"
        tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape))
        raws.append(numpy_to_raw(array, datatype))
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=model.version_str,
        id=request.id,
        outputs=tensors,
        raw_output_contents=raws,
    )

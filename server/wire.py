"""ModelInferRequest -> InferRequest (checked), and InferRequest -> ModelInferResponse.

Protobuf in, numpy views out: raw_input_contents become ``np.frombuffer``
views without a copy, typed contents are the slow path. Every check raises
InvalidArgumentError with a message naming the model, the tensor and what was
expected (protocol.md section 1.3 has the wire rules). No gRPC here.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import CodecError, contents_to_numpy, numpy_to_raw, raw_to_numpy
from tensorgate.clients.pb import grpc_service_pb2 as pb

from .errors import InvalidArgumentError
from .request import InferRequest, RequestedOutput, ShmWindow

if TYPE_CHECKING:
    from .model_version import ModelVersion, TensorInfo
    from .shm_store import SharedMemory

__all__ = ["TRITON_ACCEPTED_PARAMETERS", "MalformedMessage", "decode_request", "encode_response",
           "repository_parameters"]

# `triton_`-prefixed request parameters Triton accepts; any other such key is reserved
TRITON_ACCEPTED_PARAMETERS = frozenset({"triton_enable_empty_final_response"})
_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_IGNORED_PARAMETERS = frozenset({"binary_data_output", "headers", "binary_data", "binary_data_size"})
_MAX_ELEMENTS = 2**48
# what one decoded BYTES element costs beyond its payload: the object array's pointer and the bytes header
_BYTES_ELEMENT_COST = 8 + sys.getsizeof(b"")


class MalformedMessage:
    """A request body that is not a valid protobuf message; it carries the identity fields a reply echoes."""

    model_name = ""
    model_version = ""
    id = ""

    def __init__(self, message_name: str) -> None:
        self.reason = f"malformed request: the body is not a valid {message_name} protobuf message"


def _bad(model: ModelVersion, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"model '{model.name}' version {model.version}: {message}")


def _check_shape(model: ModelVersion, info: TensorInfo, shape: tuple[int, ...]) -> int:
    """Check a request shape against the config; returns its batch size (1 when not batching)."""
    rank, fixed = model.shape_checks[info.name]
    ok = len(shape) == rank and (not shape or min(shape) >= 0)
    if ok and math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        # no data can back such a claim; with a zero dim numpy could not even reshape to it
        raise _bad(model, f"input '{info.name}' has shape {list(shape)}: more than 2^48 elements")
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


def _check_decoded(model: ModelVersion, decoded: int, limit: int) -> None:
    if decoded > limit:
        raise _bad(
            model,
            f"the request's inputs take {decoded} bytes once decoded, more than the server's limit of "
            f"{limit} (--max-request-bytes)",
        )


def _shm_window(model: ModelVersion, what: str, params: Any,
                shm: SharedMemory | None) -> ShmWindow | None:
    """The shared_memory_* parameters of a tensor (protocol.md 1.5), checked; None when it has none."""
    if not params or not any(key in params for key in _SHM_KEYS):
        return None
    if shm is None:
        raise _bad(model, f"{what}: shared memory is not supported by this server")
    region = params.get("shared_memory_region")
    if region is None or region.WhichOneof("parameter_choice") != "string_param":
        raise _bad(model, f"{what}: 'shared_memory_region' must be given as a string when shared memory is used")
    size = params.get("shared_memory_byte_size")
    if size is None or size.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
        raise _bad(model, f"{what}: 'shared_memory_byte_size' must be given as an int64")
    offset = params.get("shared_memory_offset")
    start = 0
    if offset is not None:
        start = _int_parameter(model, "shared_memory_offset", offset, signed_ok=True)
    byte_size = _int_parameter(model, "shared_memory_byte_size", size, signed_ok=True)
    return ShmWindow(region.string_param, start, byte_size)


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


def _requested_outputs(model: ModelVersion, request: pb.ModelInferRequest,
                       shm: SharedMemory | None) -> list[RequestedOutput]:
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
        window = None
        params = out.parameters
        if params:
            window = _shm_window(model, f"output '{out.name}'", params, shm)
            if "classification" in params:
                k = _int_parameter(model, "classification", params["classification"], signed_ok=True)
                if k and model.outputs[out.name].datatype == "BYTES":
                    raise _bad(model, f"output '{out.name}' is BYTES: classification needs a numeric output")
        wanted.append(RequestedOutput(out.name, k, window))
    return wanted


def _decoded_size(model: ModelVersion, info: TensorInfo, count: int, sent: int) -> int:
    """Bytes the tensor takes once decoded, known before anything is allocated for it.

    Fixed-size types decode to what was sent. A BYTES element needs at least its
    4-byte length prefix, so a claim of more elements than `sent` / 4 is refused here.
    """
    if info.datatype != "BYTES":
        return count * info.np_dtype.itemsize  # BF16 decodes to float32
    if count * 4 > sent:
        raise _bad(
            model,
            f"input '{info.name}' claims {count} BYTES elements but only {sent} bytes were sent "
            "(each element needs at least its 4-byte length prefix)",
        )
    return count * _BYTES_ELEMENT_COST + sent - 4 * count


def decode_request(
    model: ModelVersion, request: pb.ModelInferRequest, now_ns: int, max_request_bytes: int = 2**31 - 1,
    shm: SharedMemory | None = None,
) -> InferRequest:
    """Check a ModelInferRequest against the model and turn it into an InferRequest.

    Args:
        model: the model version the request names.
        request: the wire request.
        now_ns: its arrival (monotonic ns).
        max_request_bytes: the most bytes the request's inputs may take once decoded
            (checked before anything proportional to a claimed shape is allocated).
        shm: the server's shared-memory regions (system and CUDA); inputs in a region are copied out here, so
            the request never holds a view of a mapping or a device pointer that the client may unregister.
    """
    tensors = request.inputs
    decoded = 0
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
        window = _shm_window(model, f"input '{name}'", tensor.parameters, shm) if tensor.parameters else None
        shape = tuple(tensor.shape)
        rows = _check_shape(model, info, shape)
        if batch_size == -1:
            batch_size = rows
        elif rows != batch_size:
            raise _bad(model, f"input '{name}' has batch size {rows}, other inputs have {batch_size}")
        count = math.prod(shape)
        try:
            if window is not None:
                assert shm is not None
                if tensor.HasField("contents"):
                    raise _bad(model, f"input '{name}' has both typed contents and a shared memory region")
                size = info.element_size
                if size and window.byte_size != count * size:  # checked before anything is read
                    raise _bad(model, f"input '{name}': shared_memory_byte_size {window.byte_size} does not match "
                                      f"shape {list(shape)} of {info.datatype} ({count * size} bytes)")
                decoded += _decoded_size(model, info, count, window.byte_size)
                _check_decoded(model, decoded, max_request_bytes)
                data = shm.read(window.region, window.offset, window.byte_size)
                array = raw_to_numpy(data, info.datatype, shape)
            elif tensor.HasField("contents"):
                if raw_count:
                    raise _bad(
                        model,
                        f"input '{name}' has typed contents while the request also has "
                        "raw_input_contents; use one or the other",
                    )
                decoded += count * (_BYTES_ELEMENT_COST if info.datatype == "BYTES" else info.np_dtype.itemsize)
                _check_decoded(model, decoded, max_request_bytes)
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
                decoded += _decoded_size(model, info, count, len(data))
                _check_decoded(model, decoded, max_request_bytes)
                size = info.element_size
                if size and info.datatype != "BF16" and len(data) == count * size:
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
        model, request.id, arrays, _requested_outputs(model, request, shm), batch_size, merge_key, now_ns
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


def encode_response(request: InferRequest, shm: SharedMemory | None = None) -> pb.ModelInferResponse:
    """Build the response: one raw_output_contents entry per output, in request order.

    An output requested into a shared-memory region is copied there and its raw entry left empty (Triton's rule).
    """
    model = request.model
    results = request.outputs
    assert results is not None
    tensors = []
    raws = []
    for name, k, window in request.requested:
        info = model.outputs[name]
        array = results[name]
        if info.reshape is not None:
            array = array.reshape(((array.shape[0],) if model.batching else ()) + info.dims)
        datatype = info.datatype
        if k:
            array = _classify(array, k, model.labels.get(name), model.batching)
            datatype = "BYTES"
        tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
        tensors.append(tensor)
        if window is not None and shm is not None:
            data = numpy_to_raw(array, datatype)
            shm.write(window.region, window.offset, window.byte_size, data)
            # say where it went (the REST encoder reads this; gRPC clients know from their request)
            tensor.parameters["shared_memory_region"].string_param = window.region
            tensor.parameters["shared_memory_byte_size"].int64_param = len(data)
            raws.append(b"")
        else:
            raws.append(numpy_to_raw(array, datatype))
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=model.version_str,
        id=request.id,
        outputs=tensors,
        raw_output_contents=raws,
    )


def repository_parameters(request: Any) -> dict[str, object]:
    """A RepositoryModelLoad/Unload request's parameters as plain values (its oneof's chosen field)."""
    out: dict[str, object] = {}
    for key, param in request.parameters.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidArgumentError(f"repository parameter {key[:120]!r} has no value")
        out[key] = getattr(param, which)
    return out

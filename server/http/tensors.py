"""KServe v2 REST infer bodies <-> the wire messages the data plane already checks.

A REST request becomes a ``ModelInferRequest`` whose inputs are all raw bytes:
JSON ``data`` is converted here (its element count checked against the shape
*before* any array is made), binary tensor data (Triton's extension: a JSON
header of ``Inference-Header-Content-Length`` bytes, then each input's
``binary_data_size`` bytes in order) is sliced without conversion. Everything
else (names, datatypes, shapes, byte sizes, parameters) is then checked by
``server.wire.decode_request``, the same code the gRPC path runs, so both
transports refuse the same requests with the same words.

The response goes the other way: each output of the encoded ``ModelInferResponse``
is either appended as binary (``binary_data``/``binary_data_output``) or
turned back into a flat JSON ``data`` list, as Triton writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import (
    CodecError,
    datatype_to_numpy,
    element_count,
    numpy_to_raw,
    raw_to_numpy,
)
from tensorgate.clients.pb import grpc_service_pb2 as pb

from ..errors import InvalidArgumentError

__all__ = ["HEADER_LENGTH", "MAX_JSON_BYTES", "BinaryChoice", "decode_infer_body", "encode_infer_response",
           "parse_json"]

#: Triton's binary tensor data extension: the JSON header's length, the rest of the body is tensor bytes
HEADER_LENGTH = "Inference-Header-Content-Length"
_INT_RANGE: dict[str, tuple[int, int]] = {
    f"{prefix}{bits}": (int(np.iinfo(f"{kind}{bits // 8}").min), int(np.iinfo(f"{kind}{bits // 8}").max))
    for prefix, kind in (("INT", "i"), ("UINT", "u")) for bits in (8, 16, 32, 64)
}


#: the most JSON one request may carry: parsed JSON numbers take ~20x their text in Python objects, so a
#: body that the byte limit allows could otherwise take gigabytes; tensors that large travel as binary data
MAX_JSON_BYTES = 64 * 2**20


def parse_json(text: bytes | memoryview) -> Any:
    """Parse a JSON document of bounded size (raises InvalidArgumentError)."""
    if len(text) > MAX_JSON_BYTES:
        raise InvalidArgumentError(
            f"the request's JSON is {len(text)} bytes, more than the {MAX_JSON_BYTES // 2**20} MiB this server "
            f"parses; send large tensors as binary data ({HEADER_LENGTH} and 'binary_data_size')"
        )
    try:
        return json.loads(bytes(text))
    except (ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"failed to parse the request JSON: {str(exc)[:200]}") from None


class BinaryChoice:
    """Which outputs go back as binary: the request default and per-output overrides."""

    __slots__ = ("default", "outputs")

    def __init__(self) -> None:
        self.default = False
        self.outputs: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        return self.outputs.get(name, self.default)


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(f"{what} must be a JSON array")
    return value


def set_parameter(param: pb.InferParameter, key: str, value: Any) -> None:
    """A JSON parameter value -> InferParameter (bool, int64, double or string), as Triton reads them."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise _bad(f"parameter '{key}' is out of the int64 range")
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise _bad(f"parameter '{key}' has invalid type; it should be an int, bool, double or string")


def _parameters(target: Any, params: Any, what: str, skip: tuple[str, ...] = ()) -> None:
    for key, value in _object(params, f"{what} 'parameters'").items():
        if key not in skip:
            set_parameter(target[key], key, value)


def _flatten(data: list[Any], limit: int, name: str) -> list[Any]:
    """Row-major elements of nested JSON arrays; stops as soon as there are more than `limit`."""
    out: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > limit:
                raise _bad(f"input '{name}': 'data' holds more elements than its shape allows ({limit})")
        else:
            stack.pop()
    return out


def _json_to_raw(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON `data` of one input -> its raw wire bytes, checked against shape and datatype."""
    try:
        expected = element_count(shape)
        dtype = datatype_to_numpy(datatype)
    except CodecError as exc:
        raise _bad(f"input '{name}': {exc}") from None
    values = _list(data, f"input '{name}' 'data'")
    flat = values if not values or not isinstance(values[0], list) else _flatten(values, expected, name)
    if len(flat) != expected:
        raise _bad(f"input '{name}': 'data' holds {len(flat)} elements, its shape {shape} needs {expected}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise _bad(f"input '{name}': BYTES 'data' must hold strings")
        array: npt.NDArray[Any] = np.empty(len(flat), dtype=np.object_)
        array[:] = [v.encode("utf-8") for v in flat]
        return numpy_to_raw(array, datatype)
    try:
        array = np.asarray(flat)
    except ValueError:
        raise _bad(f"input '{name}': 'data' is not a regular array of numbers") from None
    if expected:
        kind = array.dtype.kind
        if datatype == "BOOL":
            ok = kind == "b"
        elif datatype in _INT_RANGE:
            low, high = _INT_RANGE[datatype]
            ok = kind in "iu" and int(np.min(array)) >= low and int(np.max(array)) <= high
        else:
            ok = kind in "iuf"
        if not ok:
            raise _bad(f"input '{name}': 'data' does not hold {datatype} values")
    return numpy_to_raw(array.astype(dtype, copy=False), datatype)


def _add_input(request: pb.ModelInferRequest, tensor: Any, binary: memoryview, offset: int) -> int:
    """Append one input (and its raw bytes) to `request`; returns the new binary offset."""
    t = _object(tensor, "each entry of 'inputs'")
    name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise _bad("each input needs a string 'name' and 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _bad(f"input '{name}': 'shape' must be an array of integers")
    if any(not 0 <= d < 2**63 for d in shape):
        raise _bad(f"input '{name}': shape {shape} has a dimension out of range")
    entry = request.inputs.add(name=name, datatype=datatype, shape=shape)
    params = t.get("parameters") or {}
    _parameters(entry.parameters, params, f"input '{name}'", skip=("binary_data_size",))
    if "shared_memory_region" in params:  # the bytes are in a registered region (the data plane reads them)
        if "data" in t or "binary_data_size" in params:
            raise _bad(f"input '{name}' has both a shared memory region and data")
        return offset
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in t:
            raise _bad(f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
        request.raw_input_contents.append(_json_to_raw(name, datatype, shape, t["data"]))
        return offset
    if "data" in t:
        raise _bad(f"input '{name}' has both 'data' and binary data")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input '{name}': 'binary_data_size' must be a non-negative integer")
    if offset + size > len(binary):
        raise _bad(f"input '{name}': 'binary_data_size' {size} runs past the {len(binary)} bytes of binary data "
                   f"after the JSON header ({offset} already taken)")
    request.raw_input_contents.append(bytes(binary[offset:offset + size]))
    return offset + size


def decode_infer_body(
    body: bytes, header_length: str | None, model: str, version: str
) -> tuple[pb.ModelInferRequest, BinaryChoice]:
    """Parse a REST infer body into a ModelInferRequest and the response's binary choices.

    Raises:
        InvalidArgumentError: malformed JSON, data that does not fit its shape, binary sizes that do not add up.
    """
    view = memoryview(body)
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} must be an integer, got {header_length[:32]!r}") from None
        if not 0 <= split <= len(body):
            raise _bad(f"{HEADER_LENGTH} {split} does not fit the {len(body)}-byte body")
    doc = _object(parse_json(view[:split]), "the request body")
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = doc.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise _bad("'id' must be a string")
        request.id = request_id
    choice = BinaryChoice()
    params = _object(doc.get("parameters") or {}, "'parameters'")
    if "binary_data_output" in params:
        if not isinstance(params["binary_data_output"], bool):
            raise _bad("parameter 'binary_data_output' must be a bool")
        choice.default = params["binary_data_output"]
    _parameters(request.parameters, params, "the request", skip=("binary_data_output",))
    binary = view[split:]
    offset = 0
    for tensor in _list(doc.get("inputs", []), "'inputs'"):
        offset = _add_input(request, tensor, binary, offset)
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data follow the JSON header that no input claims")
    for tensor in _list(doc.get("outputs", []), "'outputs'"):
        out = _object(tensor, "each entry of 'outputs'")
        name = out.get("name")
        if not isinstance(name, str):
            raise _bad("each requested output needs a string 'name'")
        entry = request.outputs.add(name=name)
        oparams = _object(out.get("parameters") or {}, f"output '{name}' 'parameters'")
        if "binary_data" in oparams:
            if not isinstance(oparams["binary_data"], bool):
                raise _bad(f"output '{name}': parameter 'binary_data' must be a bool")
            choice.outputs[name] = oparams["binary_data"]
        _parameters(entry.parameters, oparams, f"output '{name}'", skip=("binary_data",))
    return request, choice


def _json_values(array: npt.NDArray[Any], datatype: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [bytes(v).decode("utf-8", "replace") for v in flat]
    values: list[Any] = flat.tolist()
    return values


def encode_infer_response(response: pb.ModelInferResponse, binary: BinaryChoice) -> tuple[bytes, list[bytes]]:
    """(JSON header, binary chunks in output order) of one infer response."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if "shared_memory_region" in tensor.parameters:  # written to the client's region: no data here
            entry["parameters"] = {
                "shared_memory_region": tensor.parameters["shared_memory_region"].string_param,
                "shared_memory_byte_size": tensor.parameters["shared_memory_byte_size"].int64_param}
        elif binary(tensor.name):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_values(raw_to_numpy(raw, tensor.datatype, tensor.shape), tensor.datatype)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outputs
    return json.dumps(doc, separators=(",", ":")).encode(), chunks

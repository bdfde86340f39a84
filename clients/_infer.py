"""Inference values shaped like tritonclient's, and the one request builder both clients use.

``InferInput`` holds a tensor's wire bytes (encoded once, by the shared codec),
``InferRequestedOutput`` a requested output (optionally top-k classification),
``InferResult`` wraps a ``ModelInferResponse`` and decodes outputs on demand.
``build_infer_request`` turns them into a ``ModelInferRequest`` exactly as
tritonclient does on the wire (one raw entry per input that carries data,
``priority`` as uint64, ``timeout`` in microseconds as int64).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from .codec import DATATYPES, CodecError, contents_to_numpy, numpy_to_datatype, numpy_to_raw, raw_to_numpy
from .pb import grpc_service_pb2 as pb

if TYPE_CHECKING:  # typing.Unpack is 3.11+; only the type checker needs it
    from typing_extensions import Unpack

__all__ = [
    "RESERVED_PARAMETERS",
    "InferInput",
    "InferOptions",
    "InferRequestedOutput",
    "InferResult",
    "ParameterValue",
    "build_infer_request",
    "message_to_dict",
    "set_parameter",
]

#: A custom request parameter's Python value; mapped onto the InferParameter oneof.
ParameterValue = bool | int | float | str

#: Keys set through their own arguments (or reserved by the protocol), refused in ``parameters``.
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)


def message_to_dict(message: Message) -> dict[str, Any]:
    """tritonclient's as_json form: field names as in the .proto (int64 values become strings)."""
    return MessageToDict(message, preserving_proto_field_name=True)


class InferInput:
    """One input tensor of a request: name, shape, datatype and its encoded data.

    Args:
        name: the model input's name.
        shape: the tensor's shape, batch dimension included when the model batches.
        datatype: a v2 datatype string ("INT32", "FP32", "BYTES", "BF16", ...).
    """

    def __init__(self, name: str, shape: Sequence[int], datatype: str) -> None:
        if datatype not in DATATYPES:
            raise CodecError(f"unknown datatype '{datatype}', expected one of {', '.join(DATATYPES)}")
        self._name = name
        self._shape = [int(d) for d in shape]
        self._datatype = datatype
        self._raw: bytes | None = None

    def name(self) -> str:
        """The input's name."""
        return self._name

    def datatype(self) -> str:
        """The input's v2 datatype."""
        return self._datatype

    def shape(self) -> list[int]:
        """The input's shape (a copy)."""
        return list(self._shape)

    def set_shape(self, shape: Sequence[int]) -> InferInput:
        """Change the declared shape (the data set later must match it).

        Returns:
            self, for chaining.
        """
        self._shape = [int(d) for d in shape]
        return self

    def set_data_from_numpy(self, array: npt.NDArray[Any]) -> InferInput:
        """Encode `array` as this input's raw wire bytes, checking it first as tritonclient does.

        The array's dtype must map to the declared datatype (object, bytes or str arrays for
        BYTES; float32 arrays for BF16, which are rounded to nearest even), and its shape must
        equal the declared shape.

        Args:
            array: the tensor's values.

        Returns:
            self, for chaining.

        Raises:
            TypeError: `array` is not a numpy array.
            CodecError: dtype or shape do not match the declaration.
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"input '{self._name}': expected a numpy array, got {type(array).__name__}")
        found = numpy_to_datatype(array.dtype)
        if found != self._datatype and not (self._datatype == "BF16" and found == "FP32"):
            expected = "FP32 (float32 values for BF16)" if self._datatype == "BF16" else self._datatype
            raise CodecError(
                f"input '{self._name}': got unexpected datatype {found} from numpy array, expected {expected}"
            )
        if list(array.shape) != self._shape:
            raise CodecError(
                f"input '{self._name}': got unexpected numpy array shape {list(array.shape)}, "
                f"expected {self._shape}"
            )
        self._raw = numpy_to_raw(array, self._datatype)
        return self

    def _tensor(self) -> pb.ModelInferRequest.InferInputTensor:
        return pb.ModelInferRequest.InferInputTensor(
            name=self._name, datatype=self._datatype, shape=self._shape
        )

    def __repr__(self) -> str:
        return f"InferInput({self._name!r}, {self._shape}, {self._datatype!r})"


class InferRequestedOutput:
    """An output to return; with `class_count` > 0 the server returns its top-k classes instead.

    Args:
        name: the model output's name.
        class_count: top-k classification ("value:index[:label]" BYTES strings, shape
            [batch, k]); 0 returns the tensor itself.
    """

    def __init__(self, name: str, class_count: int = 0) -> None:
        if class_count < 0:
            raise ValueError(f"output '{name}': class_count must be >= 0, got {class_count}")
        self._name = name
        self._class_count = class_count

    def name(self) -> str:
        """The output's name."""
        return self._name

    def class_count(self) -> int:
        """The requested top-k (0 = the tensor itself)."""
        return self._class_count

    def _tensor(self) -> pb.ModelInferRequest.InferRequestedOutputTensor:
        tensor = pb.ModelInferRequest.InferRequestedOutputTensor(name=self._name)
        if self._class_count:
            tensor.parameters["classification"].int64_param = self._class_count
        return tensor

    def __repr__(self) -> str:
        return f"InferRequestedOutput({self._name!r}, class_count={self._class_count})"


class InferResult:
    """A ModelInferResponse with tritonclient's accessors; outputs are decoded when asked for.

    Args:
        response: the server's response.
    """

    def __init__(self, response: pb.ModelInferResponse) -> None:
        self._response = response

    @property
    def id(self) -> str:
        """The request id the server echoed."""
        return self._response.id

    @property
    def model_name(self) -> str:
        """The model that answered."""
        return self._response.model_name

    @property
    def model_version(self) -> str:
        """The version that answered."""
        return self._response.model_version

    def as_numpy(self, name: str) -> npt.NDArray[Any] | None:
        """The output `name` as a numpy array, or None when the response has no such output.

        Raw outputs are read-only views over the response bytes (no copy); BYTES
        outputs are object arrays of ``bytes``; BF16 outputs are float32.

        Raises:
            CodecError: the output's bytes do not fit its datatype and shape.
        """
        response = self._response
        for index, output in enumerate(response.outputs):
            if output.name != name:
                continue
            shape = list(output.shape)
            if index < len(response.raw_output_contents):
                return raw_to_numpy(response.raw_output_contents[index], output.datatype, shape)
            return contents_to_numpy(output.contents, output.datatype, shape)
        return None

    @overload
    def get_output(
        self, name: str, as_json: Literal[False] = ...
    ) -> pb.ModelInferResponse.InferOutputTensor | None: ...
    @overload
    def get_output(self, name: str, as_json: Literal[True]) -> dict[str, Any] | None: ...
    def get_output(
        self, name: str, as_json: bool = False
    ) -> pb.ModelInferResponse.InferOutputTensor | dict[str, Any] | None:
        """The output tensor's metadata (name, datatype, shape, parameters), or None when absent."""
        for output in self._response.outputs:
            if output.name == name:
                return message_to_dict(output) if as_json else output
        return None

    @overload
    def get_response(self, as_json: Literal[False] = ...) -> pb.ModelInferResponse: ...
    @overload
    def get_response(self, as_json: Literal[True]) -> dict[str, Any]: ...
    def get_response(self, as_json: bool = False) -> pb.ModelInferResponse | dict[str, Any]:
        """The whole response message (or its dict form)."""
        return message_to_dict(self._response) if as_json else self._response

    def __repr__(self) -> str:
        names = [o.name for o in self._response.outputs]
        return f"InferResult(model={self.model_name!r}, id={self.id!r}, outputs={names})"


def set_parameter(param: pb.InferParameter, key: str, value: ParameterValue) -> None:
    """Put a Python value into the InferParameter oneof (bool before int: bool is an int)."""
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        param.int64_param = int(value)
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise TypeError(
            f"parameter '{key}': type {type(value).__name__} is not supported (bool, int, float, str)"
        )


class InferOptions(TypedDict, total=False):
    """``infer()``'s request options (keyword arguments), shared by every way of sending a request.

    model_version: empty lets the server pick by its version policy.
    request_id: echoed in the response (and used to correlate stream responses).
    sequence_id: correlation id of a sequence (int or str); 0 or "" = none.
    sequence_start, sequence_end: the sequence's first / last request (sent only with a sequence_id).
    priority: 0 = the model's default; 1 is the highest (sent as uint64, like tritonclient).
    timeout: server-side queue timeout in microseconds (int64); None = the model's default.
    parameters: custom request parameters (bool, int, float or str values).
    """

    model_version: str
    request_id: str
    sequence_id: int | str
    sequence_start: bool
    sequence_end: bool
    priority: int
    timeout: int | None
    parameters: Mapping[str, ParameterValue] | None


def build_infer_request(
    model_name: str,
    inputs: Iterable[InferInput],
    outputs: Iterable[InferRequestedOutput] | None = None,
    **options: Unpack[InferOptions],
) -> pb.ModelInferRequest:
    """Build a ModelInferRequest the way tritonclient puts one on the wire.

    Args:
        model_name: the model to run.
        inputs: the inputs, sent in this order, each with its raw bytes.
        outputs: the outputs to return; None returns all of them.
        **options: see ``InferOptions``.

    Returns:
        The request message.

    Raises:
        TypeError: an unknown option.
        ValueError: an input has no data, a parameter key is reserved, or priority < 0.
    """
    unknown = options.keys() - InferOptions.__optional_keys__
    if unknown:
        raise TypeError(
            f"unknown infer option(s) {sorted(unknown)}; expected {sorted(InferOptions.__optional_keys__)}"
        )
    request = pb.ModelInferRequest(
        model_name=model_name,
        model_version=options.get("model_version", ""),
        id=options.get("request_id", ""),
    )
    for item in inputs:
        request.inputs.append(item._tensor())
        if item._raw is not None:
            request.raw_input_contents.append(item._raw)
        elif "shared_memory_region" not in request.inputs[-1].parameters:
            raise ValueError(f"input '{item.name()}' has no data; call set_data_from_numpy first")
    for wanted in outputs or ():
        request.outputs.append(wanted._tensor())
    params = request.parameters
    sequence_id = options.get("sequence_id", 0)
    if sequence_id != 0 and sequence_id != "":
        set_parameter(params["sequence_id"], "sequence_id", sequence_id)
        params["sequence_start"].bool_param = options.get("sequence_start", False)
        params["sequence_end"].bool_param = options.get("sequence_end", False)
    priority = options.get("priority", 0)
    if priority < 0:
        raise ValueError(f"priority must be >= 0, got {priority}")
    if priority:
        params["priority"].uint64_param = priority
    timeout = options.get("timeout")
    if timeout is not None:
        params["timeout"].int64_param = timeout
    for key, value in (options.get("parameters") or {}).items():
        if key in RESERVED_PARAMETERS:
            raise ValueError(f"parameter '{key}' is reserved; pass it through its own argument")
        set_parameter(params[key], key, value)
    return request

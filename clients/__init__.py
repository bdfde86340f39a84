"""tensorgate's client library: generated stubs (clients.pb), the datatype codec, sync and asyncio clients.

Errors::

    InferenceServerError   a call failed; .status (grpc.StatusCode), .message, .debug_details, .request_id
    CodecError (ValueError) a tensor's bytes, shape or datatype do not fit
"""

from __future__ import annotations

from ._errors import InferenceServerError
from ._infer import InferInput, InferRequestedOutput, InferResult
from ._targets import RetryPolicy
from .aio_client import AsyncInferenceClient
from .codec import (
    DATATYPES,
    CodecError,
    config_dtype_to_datatype,
    contents_to_numpy,
    datatype_to_config_dtype,
    datatype_to_numpy,
    deserialize_bf16,
    deserialize_bytes_tensor,
    element_count,
    element_size,
    numpy_to_contents,
    numpy_to_datatype,
    numpy_to_raw,
    raw_to_numpy,
    serialize_bf16,
    serialize_bytes_tensor,
)
from .sync_client import InferenceClient

__all__ = [
    "DATATYPES",
    "AsyncInferenceClient",
    "CodecError",
    "InferInput",
    "InferRequestedOutput",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
    "RetryPolicy",
    "config_dtype_to_datatype",
    "contents_to_numpy",
    "datatype_to_config_dtype",
    "datatype_to_numpy",
    "deserialize_bf16",
    "deserialize_bytes_tensor",
    "element_count",
    "element_size",
    "numpy_to_contents",
    "numpy_to_datatype",
    "numpy_to_raw",
    "raw_to_numpy",
    "serialize_bf16",
    "serialize_bytes_tensor",
]

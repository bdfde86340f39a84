"""The one datatype codec shared by the clients and the server.

KServe v2 datatype strings <-> numpy, raw little-endian bytes <-> numpy views,
typed ``InferTensorContents`` <-> numpy, and Triton's BYTES and BF16 encodings:

* BYTES: each element is a 4-byte little-endian length followed by its bytes.
  numpy holds them as an object array of ``bytes``.
* BF16: numpy has no bfloat16, so the numpy side is float32 and the wire holds
  the upper 16 bits of each float32 (rounded to nearest even), as Triton does.
* FP16 and BF16 have no typed ``contents`` field: they travel only as raw bytes.

Everything raises ``CodecError`` (a ``ValueError``) with a message naming what
was expected, so the server can answer INVALID_ARGUMENT from it verbatim.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .pb import grpc_service_pb2 as pb
from .pb import model_config_pb2 as mc

__all__ = [
    "DATATYPES",
    "CodecError",
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


class CodecError(ValueError):
    """A tensor's bytes, shape or datatype do not fit together."""


# datatype -> (numpy dtype on the numpy side, bytes per element on the wire; 0 = variable)
_TABLE: dict[str, tuple[np.dtype[Any], int]] = {
    "BOOL": (np.dtype(np.bool_), 1),
    "UINT8": (np.dtype("<u1"), 1),
    "UINT16": (np.dtype("<u2"), 2),
    "UINT32": (np.dtype("<u4"), 4),
    "UINT64": (np.dtype("<u8"), 8),
    "INT8": (np.dtype("<i1"), 1),
    "INT16": (np.dtype("<i2"), 2),
    "INT32": (np.dtype("<i4"), 4),
    "INT64": (np.dtype("<i8"), 8),
    "FP16": (np.dtype("<f2"), 2),
    "FP32": (np.dtype("<f4"), 4),
    "FP64": (np.dtype("<f8"), 8),
    "BF16": (np.dtype("<f4"), 2),
    "BYTES": (np.dtype(np.object_), 0),
}
DATATYPES: tuple[str, ...] = tuple(_TABLE)

_KIND_TO_DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}

# typed contents field per datatype (FP16/BF16 have none)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LENGTH = struct.Struct("<I")


def _check_datatype(datatype: str) -> None:
    if datatype not in _TABLE:
        raise CodecError(f"unknown datatype '{datatype}', expected one of {', '.join(DATATYPES)}")


def datatype_to_numpy(datatype: str) -> np.dtype[Any]:
    """The numpy dtype that holds a tensor of this v2 datatype."""
    _check_datatype(datatype)
    return _TABLE[datatype][0]


def element_size(datatype: str) -> int:
    """Bytes per element on the wire; 0 for BYTES (variable)."""
    _check_datatype(datatype)
    return _TABLE[datatype][1]


def numpy_to_datatype(dtype: npt.DTypeLike) -> str:
    """The v2 datatype for a numpy dtype; str/bytes/object arrays are BYTES."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    found = _KIND_TO_DATATYPE.get(dt.newbyteorder("=") if dt.byteorder == ">" else dt)
    if found is None:
        raise CodecError(f"numpy dtype {dt} has no v2 datatype")
    return found


def config_dtype_to_datatype(data_type: int) -> str:
    """model_config DataType enum (TYPE_FP32) -> wire datatype string (FP32)."""
    name = mc.DataType.Name(data_type)  # type: ignore[arg-type]
    if name == "TYPE_INVALID":
        raise CodecError("datatype TYPE_INVALID")
    return "BYTES" if name == "TYPE_STRING" else name[len("TYPE_") :]


def datatype_to_config_dtype(datatype: str) -> int:
    """Wire datatype string (FP32) -> model_config DataType enum value."""
    _check_datatype(datatype)
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def element_count(shape: Sequence[int]) -> int:
    """Product of dims; raises on a negative dim (a request shape must be concrete)."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise CodecError(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


# ---- BYTES -----------------------------------------------------------------


def _element_bytes(item: object) -> bytes:
    """One BYTES element: bytes as they are, str as UTF-8, anything else as its str() (tritonclient's rule).

    ``bytes(5)`` would silently give five NUL bytes, so ints and floats must not reach it.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def serialize_bytes_tensor(array: npt.NDArray[Any]) -> bytes:
    """Encode each element (bytes, str as UTF-8, others as str(); C order) as a 4-byte LE length + bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = _element_bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int) -> npt.NDArray[np.object_]:
    """Decode exactly `count` length-prefixed elements; every byte must be used."""
    view = memoryview(buffer)
    total = len(view)
    # every element needs its 4-byte length prefix: check the claim before allocating for it
    if count * 4 > total:
        raise CodecError(
            f"BYTES tensor of {count} elements runs past the {total}-byte buffer "
            "(each element needs at least its 4-byte length prefix)"
        )
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > total:
            raise CodecError(
                f"BYTES element {i}: length prefix at byte {offset} runs past the {total}-byte buffer"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > total:
            raise CodecError(
                f"BYTES element {i}: length {length} at byte {offset - 4} runs past the {total}-byte buffer"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise CodecError(f"BYTES tensor holds {count} elements in {offset} bytes but {total} bytes were sent")
    return out


# ---- BF16 ------------------------------------------------------------------


def serialize_bf16(array: npt.NDArray[Any]) -> bytes:
    """float32 -> bfloat16 bytes, rounding to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    upper: npt.NDArray[np.uint32] = np.where(np.isnan(array.astype(np.float32)), bits, rounded) >> np.uint32(16)
    return upper.astype("<u2").tobytes()


def deserialize_bf16(buffer: bytes | memoryview) -> npt.NDArray[np.float32]:
    """bfloat16 bytes -> float32 (exact)."""
    halves = np.frombuffer(buffer, dtype="<u2")
    widened: npt.NDArray[np.uint32] = halves.astype("<u4") << np.uint32(16)
    floats: npt.NDArray[np.float32] = widened.view("<f4")
    return floats


# ---- raw bytes ---------------------------------------------------------------


def raw_to_numpy(raw: bytes | memoryview, datatype: str, shape: Sequence[int]) -> npt.NDArray[Any]:
    """View raw wire bytes as an array of `shape` (no copy for fixed-size types).

    Raises CodecError when the byte size is not elements x element size, or a
    BYTES buffer does not hold exactly that many elements.
    """
    _check_datatype(datatype)
    count = element_count(shape)
    dims = tuple(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count).reshape(dims)
    size = _TABLE[datatype][1]
    if len(raw) != count * size:
        raise CodecError(
            f"expected {count * size} bytes ({count} x {datatype} for shape {list(shape)}), got {len(raw)}"
        )
    if datatype == "BF16":
        return deserialize_bf16(raw).reshape(dims)
    return np.frombuffer(raw, dtype=_TABLE[datatype][0]).reshape(dims)


def numpy_to_raw(array: npt.NDArray[Any], datatype: str) -> bytes:
    """Encode an array as the raw wire bytes of `datatype` (C order, little-endian)."""
    _check_datatype(datatype)
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    if datatype == "BF16":
        return serialize_bf16(array)
    dtype = _TABLE[datatype][0]
    if array.dtype != dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype)
    return array.tobytes()


# ---- typed contents ----------------------------------------------------------


def contents_to_numpy(
    contents: pb.InferTensorContents, datatype: str, shape: Sequence[int]
) -> npt.NDArray[Any]:
    """Read typed contents (the slow path) into an array of `shape`."""
    _check_datatype(datatype)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CodecError(f"datatype {datatype} has no typed contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise CodecError(
            f"expected {count} values in {field} for shape {list(shape)}, got {len(values)}"
        )
    dims = tuple(shape)
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(dims)
    dtype = _TABLE[datatype][0]
    source = np.asarray(values)
    if source.size and datatype != "BOOL":
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and (source.min() < info.min or source.max() > info.max):
            raise CodecError(f"values in {field} do not fit {datatype}")
    return source.astype(dtype, copy=False).reshape(dims)


def numpy_to_contents(array: npt.NDArray[Any], datatype: str) -> pb.InferTensorContents:
    """Write an array into typed contents (FP16/BF16 refused: raw only)."""
    _check_datatype(datatype)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CodecError(f"datatype {datatype} has no typed contents field")
    contents = pb.InferTensorContents()
    flat = array.reshape(-1)
    if datatype == "BYTES":
        getattr(contents, field).extend(_element_bytes(x) for x in flat)
    else:
        getattr(contents, field).extend(flat.tolist())
    return contents

"""The shared datatype codec: every v2 datatype round-trips, and bad bytes raise CodecError."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tensorgate.clients import (
    DATATYPES,
    CodecError,
    InferInput,
    InferResult,
    contents_to_numpy,
    deserialize_bytes_tensor,
    numpy_to_contents,
    numpy_to_raw,
    raw_to_numpy,
    serialize_bytes_tensor,
)
from tensorgate.clients.pb import grpc_service_pb2 as pb

FIXED: dict[str, npt.NDArray[Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -1, 2]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -1, 2]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 2]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -1, 2]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [np.inf, -0.0, 3.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -1e30, 3.4e38], [np.inf, -0.0, 1e-45]], dtype=np.float32),
    "FP64": np.array([[0.1, -1e300, 1.7e308], [np.inf, -0.0, 5e-324]], dtype=np.float64),
}


def test_every_datatype_is_covered() -> None:
    assert set(DATATYPES) == set(FIXED) | {"BF16", "BYTES"}


@pytest.mark.parametrize("datatype", sorted(FIXED))
def test_fixed_size_datatypes_round_trip_raw(datatype: str) -> None:
    array = FIXED[datatype]
    raw = numpy_to_raw(array, datatype)
    assert len(raw) == array.size * array.dtype.itemsize
    back = raw_to_numpy(raw, datatype, array.shape)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert np.array_equal(np.signbit(back), np.signbit(array)) if array.dtype.kind == "f" else True


@pytest.mark.parametrize("datatype", sorted(set(FIXED) - {"FP16"}))
def test_typed_contents_round_trip(datatype: str) -> None:
    array = FIXED[datatype]
    contents = numpy_to_contents(array, datatype)
    back = contents_to_numpy(contents, datatype, array.shape)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_bf16_exact_values_round_trip_exactly() -> None:
    exact = np.array(
        [0.0, -0.0, 1.0, -2.5, 0.15625, (2 - 2.0**-7) * 2.0**127, np.inf, -np.inf, 2.0**-126],
        dtype=np.float32,
    )
    raw = numpy_to_raw(exact, "BF16")
    assert len(raw) == 2 * exact.size
    back = raw_to_numpy(raw, "BF16", exact.shape)
    assert back.dtype == np.float32
    assert np.array_equal(back, exact) and np.array_equal(np.signbit(back), np.signbit(exact))


def test_bf16_rounds_to_nearest_even() -> None:
    one = 1.0
    ulp = 2.0**-7  # bf16 keeps 7 mantissa bits
    values = np.array(
        [
            one + ulp / 2,  # tie, 1.0 is even -> down
            one + 3 * ulp / 2,  # tie, 1+ulp is odd -> up to 1+2ulp
            one + ulp * 0.75,  # above half -> up
            one + ulp * 0.25,  # below half -> down
        ],
        dtype=np.float32,
    )
    back = raw_to_numpy(numpy_to_raw(values, "BF16"), "BF16", values.shape)
    assert back.tolist() == [one, one + 2 * ulp, one + ulp, one]
    nan = raw_to_numpy(numpy_to_raw(np.array([np.nan], dtype=np.float32), "BF16"), "BF16", [1])
    assert np.isnan(nan[0])


def test_bytes_round_trip_with_empty_and_multibyte_elements() -> None:
    array = np.array([[b"", "héllo wörld ✓".encode()], [b"\x00\xff", b"plain"]], dtype=np.object_)
    raw = numpy_to_raw(array, "BYTES")
    assert raw[:4] == struct.pack("<I", 0)  # the empty element is a bare zero length
    back = raw_to_numpy(raw, "BYTES", [2, 2])
    assert back.dtype == np.object_ and back.tolist() == array.tolist()


def test_bytes_accepts_str_and_non_bytes_objects() -> None:
    assert (
        serialize_bytes_tensor(np.array(["ä", "b"]))
        == struct.pack("<I", 2) + "ä".encode() + b"\x01\x00\x00\x00b"
    )
    # ints become their decimal text (tritonclient's rule), never bytes(n) zero bytes
    decoded = deserialize_bytes_tensor(serialize_bytes_tensor(np.array([7, "x"], dtype=np.object_)), 2)
    assert decoded.tolist() == [b"7", b"x"]


def test_bytes_typed_contents_round_trip() -> None:
    array = np.array([b"", "ü".encode(), b"z"], dtype=np.object_)
    back = contents_to_numpy(numpy_to_contents(array, "BYTES"), "BYTES", [3])
    assert back.tolist() == array.tolist()


def test_bytes_length_prefix_past_the_end_raises() -> None:
    buffer = struct.pack("<I", 10) + b"short"
    with pytest.raises(CodecError, match="runs past"):
        raw_to_numpy(buffer, "BYTES", [1])
    with pytest.raises(CodecError, match="runs past"):
        raw_to_numpy(b"\x01\x00", "BYTES", [1])  # the prefix itself is cut


def test_bytes_with_trailing_bytes_raises() -> None:
    with pytest.raises(CodecError):
        raw_to_numpy(struct.pack("<I", 1) + b"ab", "BYTES", [1])


@pytest.mark.parametrize("datatype", ["INT32", "FP16", "BF16", "UINT64", "BOOL"])
def test_wrong_byte_count_raises(datatype: str) -> None:
    with pytest.raises(CodecError, match="expected"):
        raw_to_numpy(b"\x00" * 3, datatype, [2, 2])


def test_fp16_and_bf16_have_no_typed_contents() -> None:
    for datatype in ("FP16", "BF16"):
        with pytest.raises(CodecError):
            numpy_to_contents(np.zeros(2, np.float32), datatype)
        with pytest.raises(CodecError):
            contents_to_numpy(pb.InferTensorContents(), datatype, [0])


def test_infer_input_checks_dtype_and_shape_like_tritonclient() -> None:
    data = np.zeros((1, 16), np.int32)
    InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(data)
    with pytest.raises(CodecError, match="unexpected datatype FP32"):
        InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(data.astype(np.float32))
    with pytest.raises(CodecError, match=r"unexpected numpy array shape \[1, 16\], expected \[2, 16\]"):
        InferInput("INPUT0", [2, 16], "INT32").set_data_from_numpy(data)
    with pytest.raises(TypeError):
        InferInput("INPUT0", [1], "INT32").set_data_from_numpy([1])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="unknown datatype"):
        InferInput("INPUT0", [1], "FLOAT")
    # BYTES takes object, bytes and str arrays; BF16 takes float32
    for strings in (np.array([b"a"], np.object_), np.array([b"a"]), np.array(["a"])):
        InferInput("S", [1], "BYTES").set_data_from_numpy(strings)
    InferInput("B", [2], "BF16").set_data_from_numpy(np.ones(2, np.float32))
    with pytest.raises(CodecError):
        InferInput("B", [2], "BF16").set_data_from_numpy(np.ones(2, np.float64))
    resized = InferInput("INPUT0", [1, 16], "INT32").set_shape([2, 8])
    assert resized.shape() == [2, 8] and resized.name() == "INPUT0" and resized.datatype() == "INT32"


def test_infer_result_reads_raw_and_typed_outputs() -> None:
    out = pb.ModelInferResponse.InferOutputTensor
    raw = pb.ModelInferResponse(
        id="r",
        model_name="m",
        outputs=[out(name="A", datatype="INT32", shape=[2]), out(name="B", datatype="BYTES", shape=[1])],
        raw_output_contents=[np.array([1, 2], np.int32).tobytes(), serialize_bytes_tensor(np.array([b"x"]))],
    )
    result = InferResult(raw)
    assert result.id == "r" and result.model_name == "m"
    a, b = result.as_numpy("A"), result.as_numpy("B")
    assert a is not None and a.tolist() == [1, 2]
    assert b is not None and b.tolist() == [b"x"]
    assert result.as_numpy("missing") is None and result.get_output("missing") is None
    typed = pb.ModelInferResponse(
        outputs=[
            out(
                name="A",
                datatype="FP64",
                shape=[1, 2],
                contents=pb.InferTensorContents(fp64_contents=[1.5, 2]),
            )
        ]
    )
    t = InferResult(typed).as_numpy("A")
    assert t is not None and t.dtype == np.float64 and t.tolist() == [[1.5, 2.0]]
    assert InferResult(typed).get_response(as_json=True)["outputs"][0]["name"] == "A"

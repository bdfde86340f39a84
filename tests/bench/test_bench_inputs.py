"""Requests bench builds: shapes from the model and --shape, data random / zero / from .npz and JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tensorgate.bench.inputs import ModelInfo, TensorSpec, build_requests, parse_shapes
from tensorgate.clients import deserialize_bytes_tensor, raw_to_numpy
from tensorgate.clients.pb import grpc_service_pb2 as pb

MODEL = ModelInfo(
    name="m", version="2",
    inputs=(TensorSpec("IMAGE", "FP16", (-1, 3)), TensorSpec("IDS", "INT64", (5,)), TensorSpec("TEXT", "BYTES", (2,))),
    outputs=(TensorSpec("OUT", "FP32", (2,)),), max_batch_size=8, batching=True)


def _decode(payload: bytes) -> tuple[pb.ModelInferRequest, dict[str, np.ndarray]]:
    request = pb.ModelInferRequest.FromString(payload)
    arrays = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            arrays[tensor.name] = deserialize_bytes_tensor(raw, int(np.prod(tensor.shape))).reshape(tensor.shape)
        else:
            arrays[tensor.name] = raw_to_numpy(raw, tensor.datatype, list(tensor.shape))
    return request, arrays


def test_random_data_has_the_right_dtypes_shapes_and_ranges() -> None:
    [request] = build_requests(MODEL, batch_size=4, shapes=parse_shapes(["IMAGE:7,3"]), string_length=5)
    message, arrays = _decode(request.payload)
    assert request.rows == 4 and message.model_name == "m" and message.model_version == "2"
    assert arrays["IMAGE"].shape == (4, 7, 3) and arrays["IMAGE"].dtype == np.float16
    assert ((arrays["IMAGE"] >= 0) & (arrays["IMAGE"] < 1)).all()
    assert arrays["IDS"].dtype == np.int64 and ((arrays["IDS"] >= 0) & (arrays["IDS"] < 100)).all()
    assert arrays["TEXT"].shape == (4, 2) and all(len(s) == 5 for s in arrays["TEXT"].ravel())


def test_variable_dims_need_shape_and_batch_limits() -> None:
    with pytest.raises(ValueError, match="--shape IMAGE:1,3"):
        build_requests(MODEL)
    with pytest.raises(ValueError, match="max_batch_size 8"):
        build_requests(MODEL, batch_size=9, shapes={"IMAGE": [1, 3]})
    nobatch = ModelInfo("n", "", (TensorSpec("X", "FP32", (2, 2)),), (TensorSpec("Y", "FP32", (-1,)),), 0, False)
    with pytest.raises(ValueError, match="does not batch"):
        build_requests(nobatch, batch_size=2)
    [request] = build_requests(nobatch, data="zero")
    _, arrays = _decode(request.payload)
    assert arrays["X"].shape == (2, 2) and not arrays["X"].any()


def test_npz_and_perf_analyzer_json_files(tmp_path: Path) -> None:
    npz = tmp_path / "in.npz"
    np.savez(npz, IMAGE=np.ones((2, 3), np.float16), IDS=np.arange(5), TEXT=np.array(["a", "b"]).astype(bytes))
    [request] = build_requests(MODEL, batch_size=3, data=str(npz))
    _, arrays = _decode(request.payload)
    assert arrays["IMAGE"].shape == (3, 2, 3)  # one row, repeated -b times
    assert (arrays["IDS"] == np.arange(5)).all()
    doc = {"data": [
        {"IMAGE": {"content": [0.5] * 6, "shape": [2, 3]}, "IDS": [1, 2, 3, 4, 5], "TEXT": ["x", "yy"]},
        {"IMAGE": {"content": [0.25] * 3, "shape": [1, 3]}, "IDS": [0] * 5, "TEXT": ["z", "w"]},
    ]}
    path = tmp_path / "in.json"
    path.write_text(json.dumps(doc))
    requests = build_requests(MODEL, batch_size=2, data=str(path))
    assert len(requests) == 2 and all(r.rows == 2 for r in requests)
    _, first = _decode(requests[0].payload)
    assert first["IMAGE"].shape == (2, 2, 3) and list(first["TEXT"][1]) == [b"x", b"yy"]
    _, second = _decode(requests[1].payload)
    assert second["IMAGE"].shape == (2, 1, 3)
    with pytest.raises(ValueError, match="no data for input 'IDS'"):
        path.write_text(json.dumps({"data": [{"IMAGE": [0.0] * 3, "TEXT": ["a", "b"]}]}))
        build_requests(MODEL, data=str(path), shapes={"IMAGE": [1, 3]})


def test_parse_shapes() -> None:
    assert parse_shapes(["a:1,2", "b/c:3"]) == {"a": [1, 2], "b/c": [3]}
    with pytest.raises(ValueError):
        parse_shapes(["nocolon"])

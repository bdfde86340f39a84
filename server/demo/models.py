"""Small synthetic ONNX models built with onnx.helper: the demo's smoke-test model, tests and bench.

* ``build_add_sub``: Triton's classic "simple" model. INPUT0, INPUT1 [batch, dims]
  -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
* ``build_mlp``: a ReLU MLP, INPUT0 float32 [batch, in] -> OUTPUT0 [batch, out]
  (the throughput benchmark's 784->1024->1024->10).
* ``build_first_columns``: the MLP's wire signature with no compute, OUTPUT0 = INPUT0[:, :out]
  (the throughput benchmark's server-overhead probe).
* ``build_identity``: OUTPUT0 = INPUT0 for any element type and variable dims (fuzzing, BYTES paths).
* ``build_slow``: OUTPUT0 = INPUT0 after a chain of square MatMuls that depend on the input (so
  ONNX Runtime cannot fold them away): a model that takes a tunable 100s of ms (drain tests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "build_add_sub", "build_first_columns", "build_identity", "build_mlp", "build_slow", "save_model"]

OPSET = 17
_ELEM = {
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
}


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Check the model and write it atomically (temp file, then rename)."""
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tensorgate")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return model


def build_add_sub(path: Path, dims: int = 16, dtype: type = np.int32) -> None:
    """INPUT0, INPUT1 [batch, dims] -> OUTPUT0 (sum), OUTPUT1 (difference)."""
    elem = _ELEM[np.dtype(dtype)]
    shape: list[int | str] = ["batch", dims]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info("INPUT0", elem, shape), helper.make_tensor_value_info("INPUT1", elem, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem, shape), helper.make_tensor_value_info("OUTPUT1", elem, shape)],
    )
    save_model(_model(graph), path)


def build_mlp(path: Path, sizes: Sequence[int] = (784, 1024, 1024, 10), seed: int = 0) -> None:
    """A ReLU MLP with He-initialised weights: INPUT0 [batch, sizes[0]] -> OUTPUT0 [batch, sizes[-1]]."""
    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    current = "INPUT0"
    layers = len(sizes) - 1
    for i in range(layers):
        w = (rng.standard_normal((sizes[i], sizes[i + 1])) * np.sqrt(2.0 / sizes[i])).astype(np.float32)
        b = (rng.standard_normal(sizes[i + 1]) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == layers - 1
        out = "OUTPUT0" if last else f"H{i}"
        gemm_out = out if last else f"G{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits,
    )
    save_model(_model(graph), path)


def build_first_columns(path: Path, width_in: int = 784, width_out: int = 10) -> None:
    """INPUT0 float32 [batch, width_in] -> OUTPUT0 = its first width_out columns: an MLP's I/O, no compute."""
    graph = helper.make_graph(
        [helper.make_node("Slice", ["INPUT0", "starts", "ends", "axes"], ["OUTPUT0"])],
        "first_columns",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width_in])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width_out])],
        initializer=[
            numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
            numpy_helper.from_array(np.array([width_out], dtype=np.int64), "ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    save_model(_model(graph), path)


def build_slow(path: Path, width: int = 4, size: int = 512, steps: int = 8) -> None:
    """INPUT0 float32 [batch, width] -> OUTPUT0 = INPUT0, after `steps` [size, size] MatMuls.

    The matrix is built from the input's sum times zero, so it is computed per run, never folded.
    """
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["INPUT0"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "tiny"], ["fill"]),
            helper.make_node("Expand", ["fill", "square"], ["M0"]),
            *[helper.make_node("MatMul", [f"M{i}", "M0"], [f"M{i + 1}"]) for i in range(steps)],
            helper.make_node("ReduceSum", [f"M{steps}"], ["big"], keepdims=0),
            helper.make_node("Mul", ["big", "zero"], ["none"]),
            helper.make_node("Add", ["INPUT0", "none"], ["OUTPUT0"]),
        ],
        "slow",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(1e-3, dtype=np.float32), "tiny"),
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
        ],
    )
    save_model(_model(graph), path)


def build_identity(path: Path, elem: int = TensorProto.FLOAT, rank: int = 2) -> None:
    """INPUT0 [d0, ..., d(rank-1)] of ONNX element type `elem` -> OUTPUT0, the same tensor."""
    shape: list[int | str] = [f"d{i}" for i in range(rank)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", elem, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem, shape)],
    )
    save_model(_model(graph), path)

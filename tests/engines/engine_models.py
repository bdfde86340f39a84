"""Small ONNX test models built with onnx.helper, and calibration data for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorgate.server.demo.models import build_mlp, save_model


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def consumed_output_model(path: Path | None = None) -> onnx.ModelProto:
    """Y1 = X @ W is a graph output and also feeds Relu -> Cast(to=FLOAT) -> Add: both converter bugs at once."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["Y1"]),
        helper.make_node("Relu", ["Y1"], ["R"]),
        helper.make_node("Cast", ["R"], ["C"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["C", "Y1"], ["Y2"]),
    ]
    graph = helper.make_graph(
        nodes, "consumed", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, ["b", 8]),
         helper.make_tensor_value_info("Y2", TensorProto.FLOAT, ["b", 8])], [w],
    )
    model = _model(graph)
    if path is not None:
        save_model(model, path)
    return model


def conv_model(path: Path, seed: int = 0) -> None:
    """X [b, 3, 16, 16] -> Conv 8 -> Relu -> Conv 16 -> Relu -> GlobalAveragePool -> Flatten -> Gemm 10."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "W2"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "B2"),
        numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.3).astype(np.float32), "W3"),
        numpy_helper.from_array(np.zeros(10, np.float32), "B3"),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["Y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 3, 16, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 10])], inits,
    )
    save_model(_model(graph), path)


def mlp_model(path: Path, sizes: tuple[int, ...] = (64, 128, 10), seed: int = 0) -> None:
    build_mlp(path, sizes=sizes, seed=seed)


def write_calibration(model_dir: Path, name: str, shape: tuple[int, ...], files: int = 4, seed: int = 1) -> None:
    """<model_dir>/calibration/NN.npz with one float32 array `name` of `shape` each."""
    folder = model_dir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        np.savez(folder / f"{i:02d}.npz", **{name: rng.standard_normal(shape).astype(np.float32)})


def mlp_repository_model(repo: Path, name: str, config: str, sizes: tuple[int, ...] = (64, 128, 10),
                         calibration: bool = True) -> Path:
    """<repo>/<name>/1/model.onnx (an MLP), config.pbtxt and, optionally, calibration data."""
    model_dir = repo / name
    mlp_model(model_dir / "1" / "model.onnx", sizes)
    (model_dir / "config.pbtxt").write_text(config)
    if calibration:
        write_calibration(model_dir, "INPUT0", (8, sizes[0]))
    return model_dir


def precision_config(precision: str, extra: str = "", max_batch_size: int = 16) -> str:
    return (
        f"max_batch_size: {max_batch_size}\ninstance_group [ {{ kind: KIND_CPU count: 1 }} ]\n"
        f'parameters {{ key: "precision_mode" value: {{ string_value: "{precision}" }} }}\n{extra}'
    )


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'

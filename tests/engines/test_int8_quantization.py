"""INT8 artifacts: static Q/DQ with TensorRT's rules, dynamic for the CPU, node exclusion, expected error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from engine_models import conv_model, mlp_model
from onnx import numpy_helper

from tensorgate.engines.quantize import (
    excluded_nodes,
    lint_trt_qdq,
    quantize_int8_dynamic,
    quantize_int8_static,
)


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _feeds(name: str, shape: tuple[int, ...], n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    mlp_model(path, (64, 128, 10))
    return path


def test_static_int8_follows_tensorrt_rules_and_stays_close(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    facts = quantize_int8_static(mlp, out, _feeds("INPUT0", (16, 64)), work_dir=tmp_path)
    model = onnx.load(str(out))
    assert lint_trt_qdq(model) == []
    assert facts["quantize_linear_nodes"] > 0
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # Q/DQ pairs on the fp32 weights (AddQDQPairToWeight), per channel: one scale per output channel
    weight_q = [n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert weight_q and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weight_q)
    assert all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    x = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    got, want = _run(out, {"INPUT0": x}), _run(mlp, {"INPUT0": x})
    assert _cosine(got, want) > 0.99
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_orts_default_settings_fail_the_lint(mlp: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static

    from tensorgate.engines.calibration import FeedReader

    out = tmp_path / "default.onnx"
    quantize_static(str(mlp), str(out), FeedReader(_feeds("INPUT0", (8, 64))), quant_format=QuantFormat.QDQ)  # type: ignore[arg-type]
    problems = lint_trt_qdq(onnx.load(str(out)))
    assert any("int32" in p for p in problems) or any("zero point" in p for p in problems)


def test_static_int8_conv_model(tmp_path: Path) -> None:
    conv_model(tmp_path / "conv.onnx")
    out = tmp_path / "int8.onnx"
    quantize_int8_static(tmp_path / "conv.onnx", out, _feeds("X", (8, 3, 16, 16)), work_dir=tmp_path)
    assert lint_trt_qdq(onnx.load(str(out))) == []
    x = np.random.default_rng(4).standard_normal((8, 3, 16, 16)).astype(np.float32)
    assert _cosine(_run(out, {"X": x}), _run(tmp_path / "conv.onnx", {"X": x})) > 0.98


def test_exclusion_by_name_pattern_and_op_type(tmp_path: Path) -> None:
    conv_model(tmp_path / "conv.onnx")
    model = onnx.load(str(tmp_path / "conv.onnx"))
    assert excluded_nodes(model, ["conv*"], []) == ["conv1", "conv2"]
    assert excluded_nodes(model, [], ["Gemm"]) == ["fc"]
    out = tmp_path / "int8.onnx"
    quantize_int8_static(tmp_path / "conv.onnx", out, _feeds("X", (4, 3, 16, 16)), exclude_nodes=["conv2"],
                         exclude_op_types=["Gemm"], work_dir=tmp_path)
    quantized = onnx.load(str(out))
    producers = {o: n for n in quantized.graph.node for o in n.output}
    for name in ("conv2", "fc"):
        node = next(n for n in quantized.graph.node if n.name == name)
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    conv1 = next(n for n in quantized.graph.node if n.name == "conv1")
    assert producers[conv1.input[0]].op_type == "DequantizeLinear"


def test_dynamic_int8_runs_within_error(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "dyn.onnx"
    quantize_int8_dynamic(mlp, out, work_dir=tmp_path)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    x = np.random.default_rng(5).standard_normal((32, 64)).astype(np.float32)
    got, want = _run(out, {"INPUT0": x}), _run(mlp, {"INPUT0": x})
    assert _cosine(got, want) > 0.99

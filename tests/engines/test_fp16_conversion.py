"""FP16 artifacts: fp32 I/O kept, onnxconverter-common's two bugs handled, error within fp16 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from engine_models import consumed_output_model, conv_model, mlp_model
from onnx import TensorProto

from tensorgate.engines.fp16 import convert_fp16, isolate_consumed_outputs


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)  # type: ignore[no-any-return]


def test_output_consumed_inside_the_graph_and_float_casts_convert() -> None:
    model = consumed_output_model()
    converted = convert_fp16(model)
    onnx.checker.check_model(converted)
    # inputs and outputs stay fp32
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [TensorProto.FLOAT] * 2
    # the model's own Cast(to=FLOAT) now casts to FLOAT16
    own_cast = next(n for n in converted.graph.node if n.name == "Cast_2")
    assert own_cast.attribute[0].i == TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for got, want in zip(_run(converted, {"X": x}), _run(model, {"X": x}), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_the_unpatched_converter_breaks_on_that_model() -> None:
    """Documents why the workarounds exist; if a converter release fixes it, this tells us to drop them."""
    from onnxconverter_common import float16

    broken = float16.convert_float_to_float16(consumed_output_model(), keep_io_types=True)
    with pytest.raises(Exception, match=r"(?i)type"):
        _run(broken, {"X": np.ones((1, 8), np.float32)})


def test_isolate_consumed_outputs_only_touches_consumed_outputs() -> None:
    model = consumed_output_model()
    assert isolate_consumed_outputs(model) == ["Y1"]
    identity = model.graph.node[-1]
    assert identity.op_type == "Identity" and identity.output[0] == "Y1"
    assert not any("Y1" == i for n in model.graph.node[:-1] for i in n.input)


@pytest.mark.parametrize("builder", ["mlp", "conv"])
def test_fp16_artifact_within_fp16_error(tmp_path: Path, builder: str) -> None:
    path = tmp_path / "model.onnx"
    if builder == "mlp":
        mlp_model(path, (64, 128, 10))
        x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
        feed = {"INPUT0": x}
    else:
        conv_model(path)
        feed = {"X": np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    converted = convert_fp16(onnx.load(str(path)))
    assert any(t.data_type == TensorProto.FLOAT16 for t in converted.graph.initializer)
    got, want = _run(converted, feed)[0], _run(path, feed)[0]
    assert np.abs(got - want).max() < 1e-2 * max(1.0, float(np.abs(want).max()))


def test_keep_nodes_and_op_types_stay_fp32(tmp_path: Path) -> None:
    conv_model(tmp_path / "model.onnx")
    converted = convert_fp16(onnx.load(str(tmp_path / "model.onnx")), keep_nodes=["conv*"], keep_op_types=["Gemm"])
    inits = {t.name: t.data_type for t in converted.graph.initializer}
    assert inits["W1"] == inits["W2"] == inits["W3"] == TensorProto.FLOAT

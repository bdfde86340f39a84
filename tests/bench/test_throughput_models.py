"""bench.throughput's repositories: the MLP and the no-op model with the same inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tensorgate.bench.throughput import build_repository


def _session(repo: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def test_no_op_model_has_the_mlps_inputs_and_outputs_and_returns_the_first_columns(tmp_path: Path) -> None:
    mlp = _session(build_repository(tmp_path / "mlp", 1000, 1, 1))
    no_op = _session(build_repository(tmp_path / "no-op", 1000, 1, 1, no_op=True))
    for a, b in ((mlp.get_inputs(), no_op.get_inputs()), (mlp.get_outputs(), no_op.get_outputs())):
        assert [(t.name, t.type, t.shape[1:]) for t in a] == [(t.name, t.type, t.shape[1:]) for t in b]
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    (out,) = no_op.run(None, {"INPUT0": x})
    assert np.array_equal(out, x[:, :10])
    config = (tmp_path / "no-op" / "mlp" / "config.pbtxt").read_text()
    assert config == (tmp_path / "mlp" / "mlp" / "config.pbtxt").read_text()  # the same batching and instances

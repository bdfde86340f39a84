"""2:4 structured pruning: the pattern, which weights are eligible, the pipeline step (cached, gated, composable
with FP16/INT8), a refused model staying UNAVAILABLE with its figures, and TensorRT's sparse-weights flag in the
plan's cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_models import (
    conv_model,
    mlp_model,
    mlp_repository_model,
    param,
    precision_config,
    write_calibration,
)
from onnx import numpy_helper

from support import running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.engines import AccuracyGateError, EngineLoadError
from tensorgate.engines.accuracy import AccuracyThresholds
from tensorgate.engines.cache import STATS, EngineCache
from tensorgate.engines.devices import GpuDevice
from tensorgate.engines.pipeline import prepare_artifact
from tensorgate.engines.precision import PrecisionSpec
from tensorgate.engines.sparsity import eligible_layers, is_2_4_sparse, prune_2_4, prune_weight
from tensorgate.engines.tensorrt import BuildOptions
from tensorgate.engines.tensorrt.builder import sparse_capable, trt_plan_fields
from tensorgate.engines.tensorrt.runtime import TrtDistribution

A100 = GpuDevice(0, "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30, 108, "GPU-a")
T4 = GpuDevice(1, "Tesla T4", (7, 5), 16 * 2**30, 40, "GPU-t")


def test_prune_weight_keeps_the_two_largest_of_every_four_along_the_axis() -> None:
    w = np.array([[1.0, -4.0, 0.5, 3.0], [0.1, 0.2, -0.3, 0.05]], np.float32).T  # groups run down axis 0
    pruned = prune_weight(w, 0)
    assert pruned[:, 0].tolist() == [0.0, -4.0, 0.0, 3.0]
    assert np.allclose(pruned[:, 1], [0.0, 0.2, -0.3, 0.0])
    rng = np.random.default_rng(0)
    for shape, axis in (((64, 10), 0), ((10, 64), 1), ((8, 12, 3, 3), 1)):
        big = rng.standard_normal(shape).astype(np.float32)
        out = prune_weight(big, axis)
        assert is_2_4_sparse(out, axis) and not is_2_4_sparse(big, axis)
        assert np.count_nonzero(out) == big.size // 2
        kept = out != 0
        assert np.array_equal(out[kept], big[kept])  # survivors are untouched
    with pytest.raises(ValueError):
        prune_weight(np.ones((6, 4), np.float32), 0)


def test_eligible_layers_say_why_a_weight_stays_dense(tmp_path: Path) -> None:
    mlp_model(tmp_path / "mlp.onnx", (64, 128, 10))  # W0 [64,128] (K=64), W1 [128,10] (K=128)
    model = onnx.load(str(tmp_path / "mlp.onnx"))
    layers = {layer.weight: layer for layer in eligible_layers(model)}
    assert layers["W0"].pruned and layers["W0"].axis == 0 and layers["W1"].pruned
    first = layers["W0"].node
    excluded = {layer.weight: layer for layer in eligible_layers(model, [first[:2] + "*0*"])}
    assert not excluded["W0"].pruned and "excluded" in excluded["W0"].reason
    mlp_model(tmp_path / "odd.onnx", (30, 10))
    (odd,) = eligible_layers(onnx.load(str(tmp_path / "odd.onnx")))
    assert not odd.pruned and "not a multiple of 4" in odd.reason
    with pytest.raises(EngineLoadError, match="no MatMul/Gemm/Conv weight can be pruned"):
        prune_2_4(onnx.load(str(tmp_path / "odd.onnx")))
    conv_model(tmp_path / "conv.onnx")
    conv_layers = eligible_layers(onnx.load(str(tmp_path / "conv.onnx")))
    assert {layer.op_type for layer in conv_layers} >= {"Conv"}


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    mlp_model(tmp_path / "m" / "1" / "model.onnx", (64, 128, 10))
    write_calibration(tmp_path / "m", "INPUT0", (8, 64))
    return tmp_path / "m"


def test_the_pipeline_prunes_caches_and_gates(model_dir: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    model = model_dir / "1" / "model.onnx"
    spec = PrecisionSpec("FP32", sparsity="2:4")
    artifact = prepare_artifact(cache, model, spec, AccuracyThresholds(0.5), True)
    assert artifact.path != model and not artifact.cache_hit and spec.label == "FP32 2:4 sparse"
    weights = _weights(artifact.path)
    assert is_2_4_sparse(weights["W0"], 0) and is_2_4_sparse(weights["W1"], 0)
    assert artifact.accuracy is not None and artifact.accuracy.min_cosine < 1.0  # pruning costs accuracy
    misses = STATS.snapshot()["misses"]
    again = prepare_artifact(cache, model, spec, AccuracyThresholds(0.5), True)
    assert again.cache_hit and again.key == artifact.key and STATS.snapshot()["misses"] == misses
    dense_fp16 = prepare_artifact(cache, model, PrecisionSpec("FP16"), AccuracyThresholds(0.5), True)
    assert dense_fp16.key != artifact.key
    with pytest.raises(AccuracyGateError, match=r"FP32 2:4 sparse artifact refused.*cosine"):
        prepare_artifact(cache, model, spec, AccuracyThresholds(0.99999), True)


@pytest.mark.parametrize("spec", [PrecisionSpec("FP16", sparsity="2:4"), PrecisionSpec("INT8", "static",
                                                                                     sparsity="2:4")])
def test_pruning_composes_with_fp16_and_int8(model_dir: Path, tmp_path: Path, spec: PrecisionSpec) -> None:
    artifact = prepare_artifact(EngineCache(tmp_path / "c"), model_dir / "1" / "model.onnx", spec,
                                AccuracyThresholds(0.5), True)
    weights = _weights(artifact.path)
    float_weights = [w for n, w in weights.items() if n.startswith("W") and w.ndim == 2 and w.dtype.kind == "f"]
    quantized = [w for w in weights.values() if w.dtype == np.int8 and w.ndim == 2]
    assert float_weights or quantized
    for w in float_weights + quantized:
        assert is_2_4_sparse(w, 0)


def test_a_refused_pruned_model_stays_unavailable_with_its_figures(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    strict = precision_config("FP32", param("sparsity", "2:4") + param("accuracy_min_cosine", "0.99999"))
    mlp_repository_model(repo, "pruned_strict", strict)
    mlp_repository_model(repo, "pruned_ok", precision_config("FP16", param("sparsity", "2:4")
                                                             + param("accuracy_min_cosine", "0.5")))
    mlp_repository_model(repo, "bad_pattern", precision_config("FP32", param("sparsity", "1:8")))
    with running_server(repo, engine_cache_dir=tmp_path / "engines") as handle:
        stub = pb_grpc.GRPCInferenceServiceStub(handle.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["pruned_strict"].state == "UNAVAILABLE"
        assert "2:4 sparse artifact refused" in index["pruned_strict"].reason
        assert "cosine" in index["pruned_strict"].reason
        assert index["bad_pattern"].state == "UNAVAILABLE" and "sparsity must be 2:4" in index["bad_pattern"].reason
        assert index["pruned_ok"].state == "READY", index["pruned_ok"].reason
        config = stub.ModelConfig(pb.ModelConfigRequest(name="pruned_ok")).config
        assert config.parameters["precision_artifact"].string_value == "FP16 2:4 sparse"


def test_default_gate_for_a_pruned_fp32_artifact_is_cosine_0_99() -> None:
    assert AccuracyThresholds.defaults("FP32").min_cosine == 0.999  # an FP32 TensorRT plan runs TF32 tactics
    assert AccuracyThresholds.defaults("FP32", sparse=True).min_cosine == 0.99
    assert AccuracyThresholds.defaults("FP16", sparse=True).min_cosine == 0.99


def test_tensorrt_sparse_weights_flag_is_in_the_plan_key_on_capable_gpus_only() -> None:
    dense = BuildOptions()
    sparse = BuildOptions(sparse_weights=True)
    assert "sparse_weights" not in dense.key_fields()  # dense plans keep their existing keys
    assert sparse.key_fields()["sparse_weights"] is True
    trt = TrtDistribution("tensorrt-cu12-libs", "10.8.0", 12)
    assert trt_plan_fields("a", A100, trt, dense) != trt_plan_fields("a", A100, trt, sparse)
    assert sparse_capable(A100) and not sparse_capable(T4)

"""Precision through the server and `tensorgate build`: gates, figures in ModelConfig, placement, warm starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))

from engine_models import mlp_repository_model, param, precision_config

from support import REPO_ROOT, free_port, running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines.cache import STATS
from tensorgate.engines.devices import probe_gpus
from tensorgate.server.engine_factory import EngineSettings, create_engine
from tensorgate.server.engine_options import parse_engine_options
from tensorgate.server.plan import read_plan

NO_GPU = pytest.mark.skipif(probe_gpus().available, reason="checks the no-GPU path; this host has a GPU")
TRT_FP16 = """
optimization { execution_accelerators { gpu_execution_accelerator [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "268435456" }
  parameters { key: "trt_builder_optimization_level" value: "4" }
  parameters { key: "trt_profile_min_shapes" value: "INPUT0:1x64" }
  parameters { key: "trt_profile_opt_shapes" value: "INPUT0:8x64" }
  parameters { key: "trt_profile_max_shapes" value: "INPUT0:16x64" }
} ] } }
"""


@pytest.fixture(scope="module")
def precision_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("precision-repo")
    mlp_repository_model(repo, "int8", precision_config("INT8"))
    mlp_repository_model(repo, "int8dyn", precision_config("INT8", param("int8_method", "dynamic")))
    mlp_repository_model(repo, "fp16", precision_config("FP16"))
    mlp_repository_model(repo, "strict", precision_config("INT8", param("accuracy_min_cosine", "0.99999999")))
    mlp_repository_model(repo, "nocal", precision_config("INT8"), calibration=False)
    mlp_repository_model(repo, "gpu", "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU count: 2 } ]\n")
    mlp_repository_model(repo, "auto", "max_batch_size: 8\ninstance_group [ { kind: KIND_AUTO } ]\n")
    mlp_repository_model(repo, "trt", "max_batch_size: 16\ninstance_group [ { kind: KIND_AUTO } ]\n" + TRT_FP16)
    return repo


def test_precision_models_through_a_server(precision_repo: Path, tmp_path: Path) -> None:
    with running_server(precision_repo, engine_cache_dir=tmp_path / "cache") as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        for name in ("int8", "int8dyn", "fp16", "auto", "trt"):
            assert index[name].state == "READY", index[name].reason
        # a gate with a deliberately strict threshold refuses, with the figures in the reason
        strict = index["strict"]
        assert strict.state == "UNAVAILABLE"
        assert "INT8 artifact refused by the accuracy gate: cosine 0." in strict.reason
        assert "< accuracy_min_cosine 0.99999999" in strict.reason and "max abs error" in strict.reason
        assert "holdout samples" in strict.reason
        assert index["nocal"].state == "UNAVAILABLE" and "nocal/calibration/" in index["nocal"].reason
        # accepted figures are in the effective config
        params = stub.ModelConfig(pb.ModelConfigRequest(name="int8")).config.parameters
        assert params["precision_artifact"].string_value == "INT8 static"
        report = json.loads(params["accuracy_report"].string_value)
        assert report["min_cosine"] > 0.99 and report["source"] == "holdout" and report["samples"] == 8
        assert json.loads(stub.ModelConfig(pb.ModelConfigRequest(name="fp16")).config.parameters[
            "accuracy_report"].string_value)["min_cosine"] > 0.9999
        # and the int8 model answers close to the fp32 reference
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        request = pb.ModelInferRequest(model_name="int8", raw_input_contents=[x.tobytes()])
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[4, 64])
        out = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], np.float32).reshape(4, 10)
        import onnxruntime as ort

        want = ort.InferenceSession(str(precision_repo / "int8" / "1" / "model.onnx")).run(None, {"INPUT0": x})[0]
        assert np.abs(out - want).max() < 0.1 * np.abs(want).max()
        if not probe_gpus().available:
            gpu = index["gpu"]
            assert gpu.state == "UNAVAILABLE"
            assert "asks for KIND_GPU, which cannot run here: no usable GPU" in gpu.reason
            auto = stub.ModelConfig(pb.ModelConfigRequest(name="auto")).config
            assert auto.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


@NO_GPU
def test_kind_auto_fallback_says_so(precision_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = mc.ModelConfig(name="auto", max_batch_size=8)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO)
    loaded = create_engine("auto", 1, precision_repo / "auto" / "1" / "model.onnx", read_plan(config, 1),
                           EngineSettings(tmp_path / "cache"))
    assert loaded.engine.kind == "onnxruntime" and loaded.gpu_count == 0
    assert "KIND_AUTO falls back to the CPU engine (onnxruntime): no usable GPU" in loaded.description
    assert "falls back to the CPU engine" in caplog.text


def test_triton_tensorrt_keys_are_read() -> None:
    from google.protobuf import text_format

    config = text_format.Parse(TRT_FP16 + param("int8_method", "dynamic") + param("accuracy_max_abs_error", "0.5")
                               + param("precision_exclude_nodes", "a*, b") + param("accuracy_min_top1", "0.9"),
                               mc.ModelConfig())
    options = parse_engine_options(config)
    assert options.tensorrt_requested and options.gpu.precision == "FP16" and options.cpu.precision == "FP32"
    assert options.trt.workspace_bytes == 268435456 and options.trt.optimization_level == 4
    assert options.trt.min_shapes == {"INPUT0": (1, 64)} and options.trt.max_shapes == {"INPUT0": (16, 64)}
    assert options.cpu.int8_method == "dynamic" and options.cpu.exclude_nodes == ("a*", "b")
    t = options.thresholds_for("INT8")
    assert (t.min_cosine, t.max_abs_error, t.min_top1) == (0.99, 0.5, 0.9)
    assert options.thresholds_for("FP16").min_cosine == 0.999


def test_second_start_is_a_cache_hit_and_faster(tmp_path: Path) -> None:
    model_dir = mlp_repository_model(tmp_path / "repo", "big", precision_config("INT8", max_batch_size=32),
                                     sizes=(256, 1024, 1024, 10))
    config = mc.ModelConfig(name="big", max_batch_size=32)
    config.parameters["precision_mode"].string_value = "INT8"
    settings = EngineSettings(tmp_path / "cache")
    model = model_dir / "1" / "model.onnx"
    start = time.monotonic()
    cold = create_engine("big", 1, model, read_plan(config, 1), settings)
    cold_s = time.monotonic() - start
    assert not cold.cache_hit
    manifests = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json")}
    misses = STATS.snapshot()["misses"]
    start = time.monotonic()
    warm = create_engine("big", 1, model, read_plan(config, 1), settings)
    warm_s = time.monotonic() - start
    assert warm.cache_hit and STATS.snapshot()["misses"] == misses  # no build function ran
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json")} == manifests
    # a warm start's figures are measured now, on a few held-back samples, not copied from the manifest
    assert cold.accuracy is not None and warm.accuracy is not None
    assert warm.accuracy.source == "load-check" and 1 <= warm.accuracy.samples <= 4
    assert warm.accuracy.min_cosine >= cold.accuracy.min_cosine - 1e-6
    assert warm_s < cold_s * 0.7, (cold_s, warm_s)
    x = np.ones((2, 256), np.float32)
    a = cold.engine.create_instance().run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    b = warm.engine.create_instance().run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    np.testing.assert_array_equal(a, b)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorgate.server", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_build_command_then_a_warm_server(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    mlp_repository_model(repo, "int8", precision_config("INT8"))
    mlp_repository_model(repo, "fp16", precision_config("FP16"))
    cache = tmp_path / "cache"
    built = _cli("build", "--model-repository", str(repo), "--engine-cache-dir", str(cache))
    assert built.returncode == 0, built.stdout + built.stderr
    assert "INT8 static" in built.stdout and "FP16" in built.stdout and "built" in built.stdout
    assert "2 ready (0 from the cache), 0 failed" in built.stdout
    assert "int8 calibration" in built.stderr  # the progress lines
    again = _cli("build", "--model-repository", str(repo), "--engine-cache-dir", str(cache), "--model", "int8")
    assert again.returncode == 0 and "1 ready (1 from the cache)" in again.stdout
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", str(port), "--model-repository", str(repo),
         "--engine-cache-dir", str(cache), "--http-port", "0", "--metrics-port", "0"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "serving inference.GRPCInferenceService" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    text = "".join(lines)
    for model in ("int8", "fp16"):
        assert f"model {model} version 1: engine cache hit" in text, text
    assert "cache miss" not in text and "building the" not in text


def test_build_command_fails_on_a_refused_gate(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    mlp_repository_model(repo, "ok", precision_config("FP16"))
    mlp_repository_model(repo, "strict", precision_config("INT8", param("accuracy_min_cosine", "0.99999999")))
    result = _cli("build", "--model-repository", str(repo), "--engine-cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert "FAILED strict version 1: INT8 artifact refused by the accuracy gate" in result.stdout
    assert "1 ready (0 from the cache), 1 failed" in result.stdout
    missing = _cli("build", "--model-repository", str(repo), "--engine-cache-dir", str(tmp_path / "c"),
                   "--model", "nope")
    assert missing.returncode == 1 and "no such model" in missing.stdout

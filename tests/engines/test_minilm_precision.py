"""The demo MiniLM in INT8: dynamic passes a cosine >= 0.98 gate against fp32; static does with its FFN
outputs excluded (they lose too much in symmetric int8), which is what node exclusion is for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_models import param, precision_config
from minilm_calibration import SENTENCES, write_minilm_calibration

from support import running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.demo.minilm import build_minilm_onnx, load_tokenizer, locate_minilm_files

FFN_OUTPUTS = "encoder.layer.*.output.dense.*"
MINILM = 'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }, ' \
         '{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'


@pytest.fixture(scope="module")
def minilm_repo(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = getattr(pytestconfig, "cache", None)
    cache_dir = Path(cache.mkdir("tensorgate-minilm")) if cache else tmp_path_factory.mktemp("minilm-cache")
    files = locate_minilm_files(cache_dir)
    repo = tmp_path_factory.mktemp("minilm-repo")
    model = repo / "fp32" / "1" / "model.onnx"
    build_minilm_onnx(files, model)  # built once for the module
    (repo / "fp32" / "config.pbtxt").write_text(precision_config("FP32", MINILM, max_batch_size=32))
    write_minilm_calibration(repo / "fp32", files.tokenizer_json)
    configs = {
        "int8dyn": precision_config("INT8", MINILM + param("int8_method", "dynamic")
                                    + param("accuracy_min_cosine", "0.98"), 32),
        "int8static": precision_config("INT8", MINILM + param("precision_exclude_nodes", FFN_OUTPUTS)
                                       + param("accuracy_min_cosine", "0.98"), 32),
    }
    for name, config in configs.items():
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(model, repo / name / "1" / "model.onnx")
        shutil.copytree(repo / "fp32" / "calibration", repo / name / "calibration")
        (repo / name / "config.pbtxt").write_text(config)
    return repo, files.tokenizer_json


def _embed(stub: pb_grpc.GRPCInferenceServiceStub, model: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[ids.tobytes(), mask.tobytes()])
    request.inputs.add(name="input_ids", datatype="INT64", shape=list(ids.shape))
    request.inputs.add(name="attention_mask", datatype="INT64", shape=list(mask.shape))
    raw = stub.ModelInfer(request).raw_output_contents[0]
    return np.frombuffer(raw, np.float32).reshape(ids.shape[0], -1)


@pytest.mark.slow
def test_minilm_int8_passes_a_098_cosine_gate(minilm_repo: tuple[Path, Path], tmp_path: Path) -> None:
    repo, tokenizer_json = minilm_repo
    with running_server(repo, engine_cache_dir=tmp_path / "cache") as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert all(m.state == "READY" for m in index.values()), index
        for name in ("int8dyn", "int8static"):
            report = json.loads(
                stub.ModelConfig(pb.ModelConfigRequest(name=name)).config.parameters["accuracy_report"].string_value
            )
            assert report["min_cosine"] >= 0.98, (name, report)
        # sentences the calibration never saw, against fp32 through the server
        from tensorgate.server.demo.minilm import MiniLMFiles

        tok = load_tokenizer(MiniLMFiles(tokenizer_json, tokenizer_json))
        unseen = [s.upper() for s in SENTENCES[:4]] + ["An entirely different sentence about trains."]
        enc = tok.encode_batch(unseen)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        want = _embed(stub, "fp32", ids, mask)
        for name in ("int8dyn", "int8static"):
            got = _embed(stub, name, ids, mask)
            assert np.min(np.sum(got * want, axis=1)) > 0.97, name  # unit vectors: dot = cosine

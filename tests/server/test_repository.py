"""Model repository: Triton layout, config.pbtxt parsing, auto-completion, version policies, failures."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from support import RunningServer, running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.server.repository import read_model_source, select_versions


def stub_for(handle: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(handle.channel())


def policy(text: str) -> mc.ModelVersionPolicy:
    from google.protobuf import text_format

    return text_format.Parse(text, mc.ModelVersionPolicy())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [5]),
        ("latest { num_versions: 2 }", [3, 5]),
        ("all { }", [1, 3, 5]),
        ("specific { versions: [1, 5, 9] }", [1, 5]),
    ],
)
def test_version_policies(text: str, expected: list[int]) -> None:
    assert select_versions(policy(text), [3, 1, 5]) == expected


def test_autocomplete_fills_config_from_the_model(server: RunningServer) -> None:
    config = stub_for(server).ModelConfig(pb.ModelConfigRequest(name="autocomplete")).config
    assert config.name == "autocomplete"
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4  # Triton's default-max-batch-size for a batching model
    assert config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("INPUT0", mc.TYPE_INT32, [16]),
        ("INPUT1", mc.TYPE_INT32, [16]),
    ]
    assert [t.name for t in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert config.version_policy.latest.num_versions == 1
    assert config.default_model_filename == "model.onnx"
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]


def test_explicit_max_batch_size_zero_is_kept(server: RunningServer) -> None:
    stub = stub_for(server)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="nobatch")).config
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="nobatch"))
    # no batch dimension is added: the dims are the model's own, variable first dim included
    assert [list(t.shape) for t in meta.inputs] == [[-1, 16], [-1, 16]]


def test_metadata_has_batch_dimension(server: RunningServer) -> None:
    meta = stub_for(server).ModelMetadata(pb.ModelMetadataRequest(name="simple"))
    assert meta.name == "simple" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]


def _infer_simple(stub: pb_grpc.GRPCInferenceServiceStub, model: str, version: str = "") -> pb.ModelInferResponse:
    a = np.ones((1, 16), np.int32)
    T = pb.ModelInferRequest.InferInputTensor
    return stub.ModelInfer(
        pb.ModelInferRequest(
            model_name=model,
            model_version=version,
            inputs=[T(name="INPUT0", datatype="INT32", shape=[1, 16]), T(name="INPUT1", datatype="INT32", shape=[1, 16])],
            raw_input_contents=[a.tobytes(), a.tobytes()],
        ),
        timeout=30,
    )


def test_versions_failures_and_other_models_keep_serving(tmp_path: Path) -> None:
    repo = tmp_path
    # three versions, policy all; version 2 has no model file
    multi = write_model(repo, "multi", 'version_policy { all { } }\nmax_batch_size: 4\n', version=1)
    write_model(repo, "multi", None, version=3)
    (multi / "2").mkdir()
    # latest(1) picks the highest folder only
    write_model(repo, "latest", None, version=1)
    write_model(repo, "latest", None, version=4)
    # custom file name
    custom = write_model(repo, "custom", 'default_model_filename: "net.onnx"\n')
    (custom / "1" / "model.onnx").rename(custom / "1" / "net.onnx")
    # config that does not parse, config that contradicts the model, no version folders
    write_model(repo, "badconfig", "max_batch_size: [oops")
    write_model(repo, "wrongtype", 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] } ]\n')
    write_model(repo, "wrongname", 'name: "other"\n')
    (repo / "noversions").mkdir()
    (repo / "noversions" / "config.pbtxt").write_text("max_batch_size: 2\n")

    with running_server(repo) as handle:
        stub = stub_for(handle)
        index = {(m.name, m.version): m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index[("multi", "1")].state == "READY"
        assert index[("multi", "2")].state == "UNAVAILABLE" and "no model file" in index[("multi", "2")].reason
        assert index[("multi", "3")].state == "READY"
        assert ("latest", "1") not in index and index[("latest", "4")].state == "READY"
        assert index[("custom", "1")].state == "READY"
        assert "invalid config.pbtxt" in index[("badconfig", "")].reason
        assert "TYPE_FP32" in index[("wrongtype", "1")].reason and "INT32" in index[("wrongtype", "1")].reason
        assert "'other'" in index[("wrongname", "")].reason
        assert "no version folder" in index[("noversions", "")].reason
        ready_only = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
        assert {(m.name, m.version) for m in ready_only} == {("multi", "1"), ("multi", "3"), ("latest", "4"), ("custom", "1")}

        assert _infer_simple(stub, "multi").model_version == "3"  # empty version: newest ready
        assert _infer_simple(stub, "multi", "1").model_version == "1"
        with pytest.raises(grpc.RpcError) as info:
            _infer_simple(stub, "multi", "2")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            _infer_simple(stub, "badconfig")  # no version named: Triton's "no available versions"
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no available versions" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            _infer_simple(stub, "badconfig", "1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stub.ModelReady(pb.ModelReadyRequest(name="multi", version="1")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="multi", version="2")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # broken models do not make the server unready


def test_strict_readiness_reports_unready_with_a_broken_model(test_repository: Path) -> None:
    with running_server(test_repository, strict_readiness=True) as handle:
        stub = stub_for(handle)
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_read_model_source_detects_explicit_max_batch_size(tmp_path: Path) -> None:
    model = write_model(tmp_path, "m", "# max_batch_size: 3 in a comment\nname: \"m\"\n")
    assert not read_model_source(model).max_batch_size_given
    (model / "config.pbtxt").write_text("max_batch_size: 0\n")
    assert read_model_source(model).max_batch_size_given

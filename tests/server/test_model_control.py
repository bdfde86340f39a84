"""Model control over gRPC: Triton's modes, load/unload/index, name checks, config and file overrides."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import grpc
import pytest
from lifecycle_support import add_sub_repository, index_rows, infer_add_sub

from support import running_server
from tensorgate.clients import InferenceClient, InferenceServerError
from tensorgate.server.demo.models import build_add_sub

NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"


@pytest.mark.parametrize("flavor", ["aio", "thread"])
@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_answer_as_triton_outside_explicit_mode(tmp_path: Path, flavor: str, mode: str) -> None:
    with running_server(add_sub_repository(tmp_path), grpc_flavor=flavor, model_control_mode=mode) as srv, \
            InferenceClient(srv.url) as client:
        for call in (lambda: client.load_model("simple"), lambda: client.unload_model("simple")):
            with pytest.raises(InferenceServerError) as info:
                call()
            assert info.value.status == grpc.StatusCode.UNAVAILABLE and info.value.message == NOT_ALLOWED
        infer_add_sub(client)  # still serving
        assert "model_repository" in client.get_server_metadata().extensions


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_explicit_mode_loads_unloads_and_indexes(tmp_path: Path, flavor: str) -> None:
    repo = add_sub_repository(tmp_path, "simple", "other")
    with running_server(repo, grpc_flavor=flavor, model_control_mode="explicit", load_models=("simple",)) as srv, \
            InferenceClient(srv.url) as client:
        rows = index_rows(client)
        assert rows[("simple", "1")] == ("READY", "")
        assert rows[("other", "")] == ("", "")  # in the repository, never loaded (Triton lists it too)
        with pytest.raises(InferenceServerError) as info:
            infer_add_sub(client, "other")
        assert info.value.status == grpc.StatusCode.NOT_FOUND

        client.load_model("other")
        assert index_rows(client)[("other", "1")] == ("READY", "")
        assert infer_add_sub(client, "other").model_version == "1"

        client.unload_model("other", unload_dependents=True)
        assert index_rows(client)[("other", "1")] == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerError) as info:
            infer_add_sub(client, "other")
        assert info.value.status == grpc.StatusCode.NOT_FOUND
        client.unload_model("other")  # unloading what is not loaded is not an error (Triton)
        infer_add_sub(client, "simple")

        with pytest.raises(InferenceServerError) as info:
            client.load_model("absent")
        assert info.value.status == grpc.StatusCode.NOT_FOUND and "absent" in info.value.message


def test_load_model_star_loads_everything(tmp_path: Path) -> None:
    repo = add_sub_repository(tmp_path, "a", "b")
    with running_server(repo, model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        assert {k for k, v in index_rows(client).items() if v[0] == "READY"} == {("a", "1"), ("b", "1")}


BAD_NAMES = ["../simple", "simple/../../etc", "a/b", "a\\b", "..", ".hidden", "", "bad\nname", "tab\tname",
             "x" * 300, "nul\x00"]


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_bad_model_names_are_refused_everywhere(tmp_path: Path, flavor: str) -> None:
    repo = add_sub_repository(tmp_path / "repo")
    (tmp_path / "outside").mkdir()
    build_add_sub(tmp_path / "outside" / "1" / "model.onnx")  # what a traversal would reach
    with running_server(repo, grpc_flavor=flavor, model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        for name in [*BAD_NAMES, "../outside"]:
            for call in (lambda n=name: client.load_model(n), lambda n=name: client.unload_model(n)):
                with pytest.raises(InferenceServerError) as info:
                    call()
                assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT, name
                assert "invalid model name" in info.value.message
                assert "\n" not in info.value.message and "\x00" not in info.value.message
        assert {name for name, _ in index_rows(client)} == {"simple"}
        infer_add_sub(client)


def _model_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "src" / "model.onnx"
    build_add_sub(path)
    return path.read_bytes()


CONFIG_JSON = json.dumps({
    "max_batch_size": 4,
    "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
              {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},
               {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
    "instance_group": [{"kind": "KIND_CPU", "count": 1}],
})


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_config_and_file_overrides(tmp_path: Path, flavor: str) -> None:
    repo = add_sub_repository(tmp_path / "repo")
    with running_server(repo, grpc_flavor=flavor, model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        # config override: replaces config.pbtxt (max_batch_size 8 -> 4)
        client.load_model("simple", config=CONFIG_JSON)
        assert client.get_model_config("simple").config.max_batch_size == 4
        infer_add_sub(client)

        # file overrides: a model that is not in the repository, from the request's bytes alone
        before = set(Path(tempfile.gettempdir()).glob("tensorgate-load-*"))
        client.load_model("uploaded", config=CONFIG_JSON, files={"file:3/model.onnx": _model_bytes(tmp_path)})
        assert infer_add_sub(client, "uploaded").model_version == "3"
        assert not (repo / "uploaded").exists()  # never written into the repository
        staged = set(Path(tempfile.gettempdir()).glob("tensorgate-load-*")) - before
        assert len(staged) == 1 and (staged.pop().stat().st_mode & 0o777) == 0o700
        client.unload_model("uploaded")
        assert set(Path(tempfile.gettempdir()).glob("tensorgate-load-*")) - before == set()  # removed


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"files": {"file:/etc/passwd": b"x"}, "config": CONFIG_JSON}, "absolute paths are not allowed"),
        ({"files": {"file:../1/model.onnx": b"x"}, "config": CONFIG_JSON}, "'..' path parts are not allowed"),
        ({"files": {"file:1/../../x": b"x"}, "config": CONFIG_JSON}, "'..' path parts are not allowed"),
        ({"files": {"file:1//model.onnx": b"x"}, "config": CONFIG_JSON}, "empty"),
        ({"files": {"file:1/mo\ndel.onnx": b"x"}, "config": CONFIG_JSON}, "control characters"),
        ({"files": {"file:config.pbtxt": b"x"}, "config": CONFIG_JSON}, "'config' parameter"),
        ({"files": {"file:1/model.onnx": b"x"}}, "need the 'config' parameter"),
        ({"files": {"file:1/model.onnx": b"x" * 5000}, "config": CONFIG_JSON}, "exceed 4096 bytes"),
        ({"config": "{not json"}, "not a valid ModelConfig"),
        ({"config": json.dumps({"no_such_field": 1})}, "not a valid ModelConfig"),
        ({"config": json.dumps({"name": "other"})}, "names the model 'other'"),
        ({"config": " " * ((4 << 20) + 1)}, "longer than"),
        ({"config": json.dumps({"default_model_filename": "../../x.onnx"})}, "must be a plain file name"),
    ],
)
def test_bad_overrides_are_refused_before_anything_is_written(
    tmp_path: Path, parameters: dict[str, object], message: str
) -> None:
    repo = add_sub_repository(tmp_path / "repo")
    with running_server(repo, model_control_mode="explicit", load_models=("*",), model_load_max_bytes=4096) as srv, \
            InferenceClient(srv.url) as client:
        before = set(Path(tempfile.gettempdir()).glob("tensorgate-load-*"))
        with pytest.raises(InferenceServerError) as info:
            client.load_model("simple", **parameters)  # type: ignore[arg-type]
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.message, info.value.message
        assert set(Path(tempfile.gettempdir()).glob("tensorgate-load-*")) == before
        assert not (tmp_path / "etc").exists() and not (repo / "x").exists()
        assert index_rows(client)[("simple", "1")] == ("READY", "")  # the serving version is untouched
        infer_add_sub(client)


def test_unknown_parameters_are_refused(tmp_path: Path) -> None:
    from tensorgate.clients.pb import grpc_service_pb2 as pb
    from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

    repo = add_sub_repository(tmp_path / "repo")
    with running_server(repo, model_control_mode="explicit", load_models=("*",)) as srv:
        stub = pb_grpc.GRPCInferenceServiceStub(srv.channel())
        load = pb.RepositoryModelLoadRequest(model_name="simple")
        load.parameters["bogus"].string_param = "x"
        unload = pb.RepositoryModelUnloadRequest(model_name="simple")
        unload.parameters["unload_dependents"].string_param = "yes"
        for call, request in ((stub.RepositoryModelLoad, load), (stub.RepositoryModelUnload, unload)):
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_async_client_loads_and_unloads(tmp_path: Path) -> None:
    import asyncio

    from tensorgate.clients import AsyncInferenceClient

    repo = add_sub_repository(tmp_path, "simple")
    with running_server(repo, model_control_mode="explicit") as srv:
        async def go() -> list[str]:
            async with AsyncInferenceClient(srv.url) as client:
                await client.load_model("simple", config=None)
                states = [m.state for m in (await client.get_model_repository_index()).models]
                await client.unload_model("simple")
                states += [m.state for m in (await client.get_model_repository_index()).models]
                return states

        assert asyncio.run(go()) == ["READY", "UNAVAILABLE"]


def test_a_linked_config_loads_as_kubernetes_mounts_it(tmp_path: Path) -> None:
    """ConfigMap volumes are links to files: the repository is the operator's, so links there are fine."""
    repo = add_sub_repository(tmp_path / "repo")
    real = tmp_path / "configmap" / "config.pbtxt"
    real.parent.mkdir()
    (repo / "simple" / "config.pbtxt").rename(real)
    (repo / "simple" / "config.pbtxt").symlink_to(real)
    with running_server(repo, model_control_mode="explicit", load_models=("simple",)) as srv, \
            InferenceClient(srv.url) as client:
        assert index_rows(client)[("simple", "1")] == ("READY", "")
        client.unload_model("simple")
        client.load_model("simple")
        infer_add_sub(client)


def test_serve_refuses_bad_model_control_flags() -> None:
    import subprocess
    import sys

    from support import REPO_ROOT

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", "0", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    no_mode = serve("--load-model", "simple")
    assert no_mode.returncode == 2 and "--load-model needs --model-control-mode explicit" in no_mode.stderr
    bad_name = serve("--model-control-mode", "EXPLICIT", "--load-model", "../simple")
    assert bad_name.returncode == 2 and "not a valid model name" in bad_name.stderr

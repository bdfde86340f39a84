"""InferenceClient against a real server on loopback: health, metadata, statistics, infer, errors."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients import InferenceClient, InferenceServerError, InferInput, InferRequestedOutput


@pytest.fixture
def client(server: RunningServer) -> Iterator[InferenceClient]:
    with InferenceClient(server.url) as c:
        yield c


def simple_inputs(a: np.ndarray, b: np.ndarray, datatype: str = "INT32") -> list[InferInput]:
    return [
        InferInput("INPUT0", a.shape, datatype).set_data_from_numpy(a),
        InferInput("INPUT1", b.shape, datatype).set_data_from_numpy(b),
    ]


A = np.arange(32, dtype=np.int32).reshape(2, 16)
B = np.full((2, 16), 3, dtype=np.int32)


def test_live_ready_and_model_ready(client: InferenceClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("simple") is True
    assert client.is_model_ready("simple", "1") is True
    assert client.is_model_ready("broken") is False
    assert client.is_model_ready("no_such_model") is False


def test_server_and_model_metadata(client: InferenceClient) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "tensorgate" and "statistics" in meta.extensions
    assert client.get_server_metadata(as_json=True)["name"] == "tensorgate"
    model = client.get_model_metadata("simple")
    assert model.name == "simple" and list(model.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    # nobatch: max_batch_size 0, its ONNX dims are [-1, 16] (no batch dim is added); int64 is a JSON string
    as_json = client.get_model_metadata("nobatch", as_json=True)
    assert as_json["inputs"][0]["shape"] == ["-1", "16"]


def test_model_config(client: InferenceClient) -> None:
    config = client.get_model_config("simple").config
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    as_json = client.get_model_config("simple", as_json=True)
    assert as_json["config"]["max_batch_size"] == 8 and "dynamic_batching" in as_json["config"]


def test_repository_index(client: InferenceClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["broken"].state == "UNAVAILABLE" and index["broken"].reason
    assert index["simple"].state == "READY"
    ready = {m.name for m in client.get_model_repository_index(ready=True).models}
    assert "simple" in ready and "broken" not in ready
    as_json = client.get_model_repository_index(as_json=True)
    assert {m["name"] for m in as_json["models"]} >= {"simple", "broken"}


def test_statistics_count_what_was_sent(client: InferenceClient) -> None:
    def snapshot() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics("simple").model_stats
        assert stats.name == "simple" and stats.version == "1"
        return stats.inference_count, stats.inference_stats.success.count

    rows_before, ok_before = snapshot()
    for _ in range(3):
        client.infer("simple", simple_inputs(A, B))
    rows_after, ok_after = snapshot()
    assert (rows_after - rows_before, ok_after - ok_before) == (6, 3)
    all_models = client.get_inference_statistics(as_json=True)
    assert "simple" in {s["name"] for s in all_models["model_stats"]}


def test_infer_simple_adds_and_subtracts(client: InferenceClient) -> None:
    result = client.infer("simple", simple_inputs(A, B), request_id="sum-1")
    assert result.id == "sum-1" and result.model_name == "simple" and result.model_version == "1"
    total, diff = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert total is not None and diff is not None
    assert total.dtype == np.int32 and np.array_equal(total, A + B) and np.array_equal(diff, A - B)
    assert result.as_numpy("NOPE") is None


def test_requested_output_subset(client: InferenceClient) -> None:
    result = client.infer("simple", simple_inputs(A, B), [InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    diff = result.as_numpy("OUTPUT1")
    assert diff is not None and np.array_equal(diff, A - B)


def test_infer_with_parameters_priority_and_timeout(client: InferenceClient) -> None:
    result = client.infer(
        "simple",
        simple_inputs(A, B),
        priority=1,
        timeout=10_000_000,
        parameters={"note": "x", "k": 2},
        headers={"X-Trace": "1"},
        client_timeout=30,
    )
    total = result.as_numpy("OUTPUT0")
    assert total is not None and np.array_equal(total, A + B)


def test_nobatch_fp32(client: InferenceClient) -> None:
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(3, 16)  # a model dim of -1, not a batch
    result = client.infer("nobatch", simple_inputs(x, x, "FP32"))
    total = result.as_numpy("OUTPUT0")
    assert total is not None and total.shape == (3, 16) and np.allclose(total, 2 * x)


def test_classification_top_k(client: InferenceClient) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 784)).astype(np.float32)
    inputs = [InferInput("INPUT0", x.shape, "FP32").set_data_from_numpy(x)]
    plain = client.infer("mlp", inputs).as_numpy("OUTPUT0")
    top = client.infer("mlp", inputs, [InferRequestedOutput("OUTPUT0", class_count=3)])
    assert top.get_response().outputs[0].datatype == "BYTES"
    labels = top.as_numpy("OUTPUT0")
    assert plain is not None and labels is not None and labels.shape == (2, 3)
    for row in range(2):
        pairs = [item.decode().split(":") for item in labels[row]]
        values = [float(v) for v, _ in pairs]
        indices = [int(i) for _, i in pairs]
        assert values == sorted(values, reverse=True)
        assert indices == list(np.argsort(-plain[row], kind="stable")[:3])
        assert np.allclose(values, plain[row][indices], atol=1e-5)


def test_unknown_model_is_not_found(client: InferenceClient) -> None:
    with pytest.raises(InferenceServerError) as caught:
        client.infer("no_such_model", simple_inputs(A, B))
    error = caught.value
    assert error.status is grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in error.message
    assert str(error).startswith("[StatusCode.NOT_FOUND] ")
    assert isinstance(error.__cause__, grpc.RpcError)
    with pytest.raises(InferenceServerError) as meta:
        client.get_model_metadata("no_such_model")
    assert meta.value.status is grpc.StatusCode.NOT_FOUND


def test_wrong_datatype_is_invalid_argument_naming_model_and_tensor(client: InferenceClient) -> None:
    f = A.astype(np.float32)
    with pytest.raises(InferenceServerError) as caught:
        client.infer("simple", simple_inputs(f, f, "FP32"))
    error = caught.value
    assert error.status is grpc.StatusCode.INVALID_ARGUMENT
    assert "simple" in error.message and "INPUT0" in error.message and "FP32" in error.message


def test_a_named_version_that_failed_to_load_is_unavailable(client: InferenceClient) -> None:
    with pytest.raises(InferenceServerError) as caught:
        client.infer("broken", simple_inputs(A, B), model_version="1")
    assert caught.value.status is grpc.StatusCode.UNAVAILABLE and "broken" in caught.value.message


def test_client_side_errors_before_sending(client: InferenceClient) -> None:
    with pytest.raises(ValueError, match="no data"):
        client.infer("simple", [InferInput("INPUT0", [1, 16], "INT32")])
    with pytest.raises(ValueError, match="reserved"):
        client.infer("simple", simple_inputs(A, B), parameters={"priority": 1})
    with pytest.raises(TypeError):
        client.infer("simple", simple_inputs(A, B), parameters={"bad": [1]})  # type: ignore[dict-item]


def test_unreachable_server_is_unavailable() -> None:
    with InferenceClient("127.0.0.1:1") as dead, pytest.raises(InferenceServerError) as caught:
        dead.is_server_live(client_timeout=5)
    assert caught.value.status is grpc.StatusCode.UNAVAILABLE


def test_call_options_are_checked(client: InferenceClient) -> None:
    assert client.is_server_live(headers={"x-anything": "1"}, client_timeout=30) is True
    with pytest.raises(TypeError, match="unexpected keyword"):
        client.is_server_live(timeout=3)  # type: ignore[call-arg]

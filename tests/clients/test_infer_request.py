"""The request builder puts requests on the wire exactly as tritonclient does; errors read like tritonclient's."""

from __future__ import annotations

import pickle

import grpc
import numpy as np
import pytest

from tensorgate.clients import InferenceServerError, InferInput, InferRequestedOutput, serialize_bytes_tensor
from tensorgate.clients._calls import call_options, stream_item, stream_request
from tensorgate.clients._errors import rpc_errors
from tensorgate.clients._infer import build_infer_request
from tensorgate.clients.pb import grpc_service_pb2 as pb


def two_inputs() -> list[InferInput]:
    a = np.arange(4, dtype=np.int32).reshape(1, 4)
    return [
        InferInput("B_FIRST", [1, 4], "INT32").set_data_from_numpy(a),
        InferInput("A_SECOND", [2], "BYTES").set_data_from_numpy(np.array(["x", "yz"], dtype=np.object_)),
    ]


def test_inputs_keep_their_order_with_one_raw_entry_each() -> None:
    request = build_infer_request("m", two_inputs(), model_version="3", request_id="r-1")
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r-1")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("B_FIRST", "INT32", [1, 4]),
        ("A_SECOND", "BYTES", [2]),
    ]
    assert request.raw_input_contents == [
        np.arange(4, dtype=np.int32).tobytes(),
        serialize_bytes_tensor(np.array([b"x", b"yz"], dtype=np.object_)),
    ]
    assert not request.outputs and not request.parameters


def test_outputs_and_classification() -> None:
    request = build_infer_request(
        "m", two_inputs(), [InferRequestedOutput("P"), InferRequestedOutput("Q", 5)]
    )
    assert [o.name for o in request.outputs] == ["P", "Q"]
    assert not request.outputs[0].parameters
    assert request.outputs[1].parameters["classification"].WhichOneof("parameter_choice") == "int64_param"
    assert request.outputs[1].parameters["classification"].int64_param == 5


def test_reserved_parameters_use_tritonclients_types() -> None:
    request = build_infer_request(
        "m",
        two_inputs(),
        sequence_id=42,
        sequence_start=True,
        priority=2,
        timeout=1500,
        parameters={"flag": True, "n": 7, "ratio": 0.5, "name": "v"},
    )
    params = request.parameters

    def kind(key: str) -> str | None:
        return params[key].WhichOneof("parameter_choice")

    assert kind("sequence_id") == "int64_param" and params["sequence_id"].int64_param == 42
    assert params["sequence_start"].bool_param is True and params["sequence_end"].bool_param is False
    assert kind("priority") == "uint64_param" and params["priority"].uint64_param == 2
    assert kind("timeout") == "int64_param" and params["timeout"].int64_param == 1500
    assert [kind(k) for k in ("flag", "n", "ratio", "name")] == [
        "bool_param",
        "int64_param",
        "double_param",
        "string_param",
    ]
    string_seq = build_infer_request("m", two_inputs(), sequence_id="abc").parameters["sequence_id"]
    assert string_seq.string_param == "abc"
    assert not build_infer_request("m", two_inputs(), sequence_start=True).parameters  # no id, no flags


def test_bad_requests_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="reserved"):
        build_infer_request("m", two_inputs(), parameters={"sequence_id": 1})
    with pytest.raises(ValueError, match="priority"):
        build_infer_request("m", two_inputs(), priority=-1)
    with pytest.raises(TypeError, match="unknown infer option"):
        build_infer_request("m", two_inputs(), modelversion="1")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        call_options({"client_timout": 1.0})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(ValueError, match="class_count"):
        InferRequestedOutput("P", -1)


def test_stream_items_in_every_form() -> None:
    as_tuple = stream_request(("m", two_inputs(), [InferRequestedOutput("P")]))
    as_mapping = stream_request({"model_name": "m", "inputs": two_inputs(), "request_id": "k"})
    ready = pb.ModelInferRequest(model_name="m")
    assert [o.name for o in as_tuple.outputs] == ["P"] and as_mapping.id == "k"
    assert stream_request(ready) is ready
    with pytest.raises(TypeError):
        stream_request(42)  # type: ignore[arg-type]
    failed = stream_item(
        pb.ModelStreamInferResponse(error_message="bad", infer_response=pb.ModelInferResponse(id="k"))
    )
    assert isinstance(failed, InferenceServerError) and failed.request_id == "k"
    assert failed.status is grpc.StatusCode.UNKNOWN and str(failed) == "[StatusCode.UNKNOWN] bad"


def test_error_shape() -> None:
    error = InferenceServerError(grpc.StatusCode.NOT_FOUND, "unknown model 'x'", "debug", "r")
    assert str(error) == "[StatusCode.NOT_FOUND] unknown model 'x'"
    assert (error.status, error.message, error.debug_details, error.request_id) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'x'",
        "debug",
        "r",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.message, copy.request_id) == (error.status, error.message, error.request_id)


def test_the_seam_leaves_other_errors_alone() -> None:
    # gRPC errors are translated against the real server (test_sync_client, test_aio_client)
    with pytest.raises(KeyError), rpc_errors():
        raise KeyError("not ours")

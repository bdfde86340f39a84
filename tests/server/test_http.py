"""KServe v2 REST / Triton HTTP: every route over a real loopback server, with httpx as the client.

The session server (conftest) serves gRPC and HTTP from one data plane; these
requests are what curl or any v2 REST client sends.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def _simple_json(a: list[int], b: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b},
        ],
        **extra,
    }


def _split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    size = int(response.headers[HEADER])
    return json.loads(response.content[:size]), response.content[size:]


def _binary_body(doc: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + b"".join(chunks), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


# ---- health and metadata ---------------------------------------------------------------


def test_health_routes_answer_200_or_400_as_triton(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/simple/ready").status_code == 200
    assert http.get("/v2/models/simple/versions/1/ready").status_code == 200
    assert http.get("/v2/models/broken/ready").status_code == 400
    assert http.get("/v2/models/nosuch/ready").status_code == 400


def test_server_metadata(http: httpx.Client) -> None:
    doc = http.get("/v2").json()
    assert doc["name"] == "tensorgate" and doc["version"]
    assert "binary_tensor_data" in doc["extensions"] and "statistics" in doc["extensions"]


def test_model_metadata_has_numbers_for_shapes(http: httpx.Client) -> None:
    doc = http.get("/v2/models/simple").json()
    assert doc["name"] == "simple" and doc["versions"] == ["1"] and doc["platform"] == "onnxruntime_onnx"
    assert doc["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert http.get("/v2/models/simple/versions/1").json() == doc


def test_model_config_is_the_config_with_proto_names_and_int_dims(http: httpx.Client) -> None:
    doc = http.get("/v2/models/simple/config").json()
    assert doc["name"] == "simple" and doc["max_batch_size"] == 8
    assert doc["input"][0]["dims"] == [16] and doc["input"][0]["data_type"] == "TYPE_INT32"
    assert "dynamic_batching" in doc and doc["instance_group"][0]["kind"] == "KIND_CPU"
    assert http.get("/v2/models/simple/versions/1/config").json() == doc


def test_unknown_model_is_404_with_an_error_object(http: httpx.Client) -> None:
    for path in ("/v2/models/nosuch", "/v2/models/nosuch/config"):
        r = http.get(path)
        assert r.status_code == 404 and "nosuch" in r.json()["error"]


def test_not_ready_model_is_503(http: httpx.Client) -> None:
    r = http.post("/v2/models/broken/versions/1/infer", json=_simple_json([0] * 16, [0] * 16))
    assert r.status_code == 503 and r.json()["error"]


def test_unknown_route_and_wrong_method_answer_json(http: httpx.Client) -> None:
    r = http.get("/v2/nothing/here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = http.get("/v2/models/simple/infer")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}


# ---- inference -------------------------------------------------------------------------


def test_infer_json(http: httpx.Client) -> None:
    a, b = list(range(16)), [1] * 16
    r = http.post("/v2/models/simple/infer", json=_simple_json(a, b, id="r1"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["model_name"] == "simple" and doc["model_version"] == "1" and doc["id"] == "r1"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["OUTPUT0"] == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16],
                              "data": [x + 1 for x in a]}
    assert out["OUTPUT1"]["data"] == [x - 1 for x in a]


def test_infer_json_nested_data_and_a_version_route(http: httpx.Client) -> None:
    nested = [list(range(16))]
    r = http.post("/v2/models/simple/versions/1/infer", json=_simple_json(nested, nested))  # type: ignore[arg-type]
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [2 * x for x in range(16)]


def test_infer_fp32_json_on_a_model_without_batching(http: httpx.Client) -> None:
    doc = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
                      for n in ("INPUT0", "INPUT1")],
           "outputs": [{"name": "OUTPUT0"}]}
    r = http.post("/v2/models/nobatch/infer", json=doc)
    assert r.status_code == 200
    (out,) = r.json()["outputs"]
    assert out["name"] == "OUTPUT0" and out["data"] == [1.0] * 16


def test_infer_binary_tensor_data_both_ways(http: httpx.Client) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    doc = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "INT32",
                       "parameters": {"binary_data_size": a.nbytes}},
                      {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32",
                       "parameters": {"binary_data_size": b.nbytes}}],
           "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}},
                       {"name": "OUTPUT1", "parameters": {"binary_data": False}}]}
    body, headers = _binary_body(doc, a.tobytes(), b.tobytes())
    r = http.post("/v2/models/simple/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    header, binary = _split(r)
    out0, out1 = header["outputs"]
    assert out0["parameters"] == {"binary_data_size": a.nbytes} and "data" not in out0
    np.testing.assert_array_equal(np.frombuffer(binary, np.int32).reshape(2, 16), a + b)
    assert out1["data"] == (a - b).reshape(-1).tolist()


def test_binary_data_output_applies_to_every_output(http: httpx.Client) -> None:
    r = http.post("/v2/models/simple/infer", json=_simple_json([1] * 16, [1] * 16,
                                                                parameters={"binary_data_output": True}))
    header, binary = _split(r)
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [64, 64]
    assert np.frombuffer(binary, np.int32).tolist() == [2] * 16 + [0] * 16


def test_classification_over_http(http: httpx.Client) -> None:
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, 784], "datatype": "FP32", "data": [0.1] * 784}],
           "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 3}}]}
    name = http.get("/v2/models/mlp").json()
    doc["inputs"][0]["name"] = name["inputs"][0]["name"]
    doc["outputs"][0]["name"] = name["outputs"][0]["name"]
    r = http.post("/v2/models/mlp/infer", json=doc)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 3] and len(out["data"]) == 3
    assert all(len(s.split(":")) == 2 for s in out["data"])


def test_gzip_both_ways(http: httpx.Client) -> None:
    import gzip

    body = gzip.compress(json.dumps(_simple_json([2] * 16, [1] * 16)).encode())
    r = http.post("/v2/models/simple/infer", content=body,
                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.json()["outputs"][0]["data"] == [3] * 16  # httpx decompressed it


BAD_BODIES: list[tuple[str, bytes, dict[str, str], str]] = [
    ("not JSON", b"{nope", {}, "parse"),
    ("not an object", b"[1, 2]", {}, "JSON object"),
    ("too few elements", json.dumps(_simple_json([1] * 15, [1] * 16)).encode(), {}, "15 elements"),
    ("too many nested elements", json.dumps(_simple_json([[1] * 16, [1]], [1] * 16)).encode(), {}, "more elements"),
    ("strings for INT32", json.dumps(_simple_json(["a"] * 16, [1] * 16)).encode(), {}, "INT32"),
    ("out of INT32 range", json.dumps(_simple_json([2**40] * 16, [1] * 16)).encode(), {}, "INT32"),
    ("floats for INT32", json.dumps(_simple_json([0.5] * 16, [1] * 16)).encode(), {}, "INT32"),
    ("a shape of 10^12 elements", json.dumps({"inputs": [{"name": "INPUT0", "shape": [1000000, 1000000],
                                                           "datatype": "INT32", "data": [1]}]}).encode(), {}, "needs"),
    ("wrong datatype", json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                                "data": [1.0] * 16},
                                               {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32",
                                                "data": [1] * 16}]}).encode(), {}, "datatype FP32"),
    ("header longer than the body", b"{}", {HEADER: "99"}, HEADER),
    ("header not a number", b"{}", {HEADER: "x"}, HEADER),
    ("binary size past the end", *_binary_body(
        {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
                     "parameters": {"binary_data_size": 64}}]}, b"\0" * 10), "runs past"),
    ("binary left over", *_binary_body(_simple_json([1] * 16, [1] * 16), b"\0" * 8), "no input claims"),
    ("binary size not matching the shape", *_binary_body(
        {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 60}}
                    for n in ("INPUT0", "INPUT1")]}, b"\0" * 120), "expected 64 bytes"),
    ("no data at all", json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32"}]}).encode(),
     {}, "neither"),
    ("bad parameter type", json.dumps(_simple_json([1] * 16, [1] * 16, parameters={"x": [1]})).encode(), {},
     "invalid type"),
    ("reserved parameter", json.dumps(_simple_json([1] * 16, [1] * 16, parameters={"triton_x": 1})).encode(), {},
     "reserved"),
    ("unknown output", json.dumps(_simple_json([1] * 16, [1] * 16, outputs=[{"name": "NOPE"}])).encode(), {},
     "NOPE"),
]


@pytest.mark.parametrize("body,headers,words", [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_infer_bodies_answer_400_and_the_server_keeps_serving(
    http: httpx.Client, body: bytes, headers: dict[str, str], words: str
) -> None:
    r = http.post("/v2/models/simple/infer", content=body, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert http.post("/v2/models/simple/infer", json=_simple_json([1] * 16, [1] * 16)).status_code == 200


# ---- statistics, repository, settings ------------------------------------------------------


def test_statistics_count_http_requests_with_numbers(http: httpx.Client) -> None:
    def count() -> int:
        doc = http.get("/v2/models/simple/stats").json()
        (stats,) = doc["model_stats"]
        assert stats["name"] == "simple" and stats["version"] == "1"
        value: int = stats["inference_stats"]["success"]["count"]
        assert isinstance(value, int)
        return value

    before = count()
    http.post("/v2/models/simple/infer", json=_simple_json([1] * 16, [1] * 16))
    assert count() == before + 1
    everything = http.get("/v2/models/stats").json()["model_stats"]
    assert {"simple", "mlp"} <= {s["name"] for s in everything}
    assert http.get("/v2/models/simple/versions/1/stats").json()["model_stats"][0]["name"] == "simple"
    r = http.get("/v2/models/broken/stats")
    assert r.status_code == 400 and "broken" in r.json()["error"]


def test_repository_index(http: httpx.Client) -> None:
    models = http.post("/v2/repository/index").json()
    by_name = {m["name"]: m for m in models}
    assert by_name["simple"]["state"] == "READY" and by_name["simple"]["version"] == "1"
    assert by_name["broken"]["state"] == "UNAVAILABLE" and by_name["broken"]["reason"]
    ready = {m["name"] for m in http.post("/v2/repository/index", json={"ready": True}).json()}
    assert "simple" in ready and "broken" not in ready
    assert http.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400


def test_load_and_unload_in_mode_none_answer_like_the_grpc_rpcs(http: httpx.Client, server: RunningServer) -> None:
    """Mode none (the default): refused as Triton refuses them, over both protocols."""
    for verb in ("load", "unload"):
        r = http.post(f"/v2/repository/models/simple/{verb}", json={"parameters": {}})
        assert r.status_code == 503 and "not allowed" in r.json()["error"]
    r = http.post("/v2/repository/models/simple/load", json={"parameters": {"file:1/model.onnx": "%%%"}})
    assert r.status_code == 400 and "base64" in r.json()["error"]
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "not allowed" in (info.value.details() or "")


def test_load_and_unload_over_rest_in_explicit_mode(test_repository: Path) -> None:
    handle = RunningServer(test_repository, model_control_mode="explicit", load_models=("simple",)).start()
    try:
        with httpx.Client(base_url=handle.http_url, timeout=60) as client:
            assert client.get("/v2/models/simple/ready").status_code == 200
            assert client.post("/v2/repository/models/simple/unload", json={}).status_code == 200
            assert client.get("/v2/models/simple/ready").status_code == 400
            assert client.post("/v2/repository/models/simple/load", json={}).status_code == 200
            assert client.get("/v2/models/simple/ready").status_code == 200
            bad = client.post("/v2/repository/models/..%2Fetc/load", json={})
            assert bad.status_code in (400, 404)
    finally:
        handle.stop()


def test_shared_memory_routes_when_regions_are_off(http: httpx.Client) -> None:
    r = http.post("/v2/systemsharedmemory/region/r/register", json={"key": "/x", "offset": 0, "byte_size": 64})
    assert r.status_code == 503 and "--allow-client-shm true" in r.json()["error"]
    assert http.get("/v2/systemsharedmemory/status").json() == []
    assert http.get("/v2/cudasharedmemory/status").json() == []
    assert http.get("/v2/cudasharedmemory/region/r/status").status_code == 404
    assert http.post("/v2/cudasharedmemory/unregister").status_code == 200
    r = http.post("/v2/cudasharedmemory/region/r/register", json={"raw_handle": {"b64": ""}, "device_id": 0,
                                                                  "byte_size": 64})
    assert r.status_code == 503 and "--allow-client-shm true" in r.json()["error"]


def test_inputs_and_outputs_through_shared_memory_over_rest(test_repository: Path) -> None:
    from multiprocessing import shared_memory

    handle = RunningServer(test_repository, allow_client_shm=True).start()
    segment = shared_memory.SharedMemory(create=True, size=4096)
    a, b = np.arange(16, dtype=np.int32), np.full(16, 2, dtype=np.int32)
    segment.buf[:64], segment.buf[64:128] = a.tobytes(), b.tobytes()
    try:
        with httpx.Client(base_url=handle.http_url, timeout=30) as client:
            bad = client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/../etc/passwd",
                                                                                "byte_size": 64})
            assert bad.status_code == 400
            assert client.post("/v2/systemsharedmemory/region/r/register",
                               json={"key": "/" + segment.name, "offset": 0, "byte_size": 4096}).status_code == 200
            assert client.get("/v2/systemsharedmemory/region/r/status").json() == [
                {"name": "r", "key": "/" + segment.name, "offset": 0, "byte_size": 4096}]

            def window(offset: int) -> dict[str, Any]:
                return {"shared_memory_region": "r", "shared_memory_byte_size": 64, "shared_memory_offset": offset}

            doc = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": window(0)},
                              {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": window(64)}],
                   "outputs": [{"name": "OUTPUT0", "parameters": window(128)}, {"name": "OUTPUT1"}]}
            r = client.post("/v2/models/simple/infer", json=doc)
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            assert "data" not in out["OUTPUT0"] and out["OUTPUT0"]["parameters"]["shared_memory_region"] == "r"
            assert out["OUTPUT1"]["data"] == (a - b).tolist()
            np.testing.assert_array_equal(np.frombuffer(bytes(segment.buf[128:192]), np.int32), a + b)
            assert client.post("/v2/systemsharedmemory/region/r/unregister").status_code == 200
            assert client.get("/v2/systemsharedmemory/status").json() == []
    finally:
        handle.stop()
        segment.close()
        segment.unlink()


def test_trace_settings(http: httpx.Client) -> None:
    doc = http.get("/v2/trace/setting").json()
    assert isinstance(doc["trace_level"], list) and isinstance(doc["trace_rate"], str)
    model = http.post("/v2/models/simple/trace/setting", json={"trace_rate": "7"}).json()
    assert model["trace_rate"] == "7"
    assert http.get("/v2/models/simple/trace/setting").json()["trace_rate"] == "7"
    assert http.get("/v2/trace/setting").json()["trace_rate"] == doc["trace_rate"]  # global untouched
    cleared = http.post("/v2/models/simple/trace/setting", json={"trace_rate": None}).json()
    assert cleared["trace_rate"] == doc["trace_rate"]
    r = http.post("/v2/models/nosuch/trace/setting", json={})
    assert r.status_code == 400 and "nosuch" in r.json()["error"]
    assert http.post("/v2/trace/setting", json={"trace_rate": {"x": 1}}).status_code == 400


def test_log_settings(http: httpx.Client) -> None:
    doc = http.get("/v2/logging").json()
    assert isinstance(doc["log_info"], bool) and isinstance(doc["log_verbose_level"], int)
    try:
        assert http.post("/v2/logging", json={"log_verbose_level": 1}).json()["log_verbose_level"] == 1
    finally:
        http.post("/v2/logging", json={"log_verbose_level": doc["log_verbose_level"]})
    assert http.post("/v2/logging", json={"log_verbose_level": -1}).status_code == 400


def test_a_body_over_the_limit_is_413(test_repository: Any) -> None:
    from support import running_server

    with running_server(test_repository, max_receive_message_bytes=1024) as handle:
        r = httpx.post(f"{handle.http_url}/v2/models/simple/infer", content=b"x" * 4096)
        assert r.status_code == 413 and r.json()["error"]


def test_bf16_and_bytes_helpers_round_trip() -> None:
    """JSON -> raw for the datatypes without a numpy twin (the wire format Triton uses)."""
    from tensorgate.server.http.tensors import _json_to_raw

    assert _json_to_raw("x", "BYTES", [2], ["ab", "c"]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert _json_to_raw("x", "BF16", [2], [1.0, -2.0]) == np.array([0x3F80, 0xC000], "<u2").tobytes()
    assert _json_to_raw("x", "BOOL", [2], [True, False]) == b"\x01\x00"


def test_json_is_bounded_while_binary_data_is_not(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed JSON numbers cost ~20x their text: the JSON part has its own bound, binary tensors only the body's."""
    monkeypatch.setattr("tensorgate.server.http.tensors.MAX_JSON_BYTES", 600)
    r = http.post("/v2/models/simple/infer", json=_simple_json([1000] * 16, [1000] * 16, id="x" * 400))
    assert r.status_code == 400 and "binary data" in r.json()["error"]
    a = np.ones((8, 16), np.int32)
    doc = {"inputs": [{"name": n, "shape": [8, 16], "datatype": "INT32", "parameters": {"binary_data_size": a.nbytes}}
                      for n in ("INPUT0", "INPUT1")], "parameters": {"binary_data_output": True}}
    body, headers = _binary_body(doc, a.tobytes(), a.tobytes())
    assert len(body) > 600
    assert http.post("/v2/models/simple/infer", content=body, headers=headers).status_code == 200


def test_the_readme_curl_example_answers_as_printed(http: httpx.Client) -> None:
    import re

    from support import REPO_ROOT

    found = re.search(r"curl -s 127\.0\.0\.1:8000/v2/models/simple/infer -d '(.*?)'", (REPO_ROOT / "README.md")
                      .read_text(), re.S)
    assert found, "the README's REST infer example went missing"
    r = http.post("/v2/models/simple/infer", content=found.group(1).encode())
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == list(range(1, 17))

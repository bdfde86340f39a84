"""Helpers for the telemetry tests: a repository, traced servers, span files, metric scrapes."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from support import RunningServer, running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.telemetry import TelemetrySettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

T = pb.ModelInferRequest.InferInputTensor

# batches form while the first request waits out the delay (no preferred size: the whole delay)
BATCHING = """
name: "simple"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 300000 }
parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }
"""

# every request times out in the queue (1 ms) long before the 400 ms delay ends: REJECTED, DEADLINE_EXCEEDED
TIMEOUTS = BATCHING.replace('name: "simple"', 'name: "timeouts"').replace(
    "dynamic_batching { max_queue_delay_microseconds: 300000 }",
    "dynamic_batching { max_queue_delay_microseconds: 400000 "
    "default_queue_policy { default_timeout_microseconds: 1000 } }",
)

# A + B with independent variable widths: the server accepts [1,3] + [1,4], ONNX Runtime refuses (BACKEND)
FAILING = """
name: "failing"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ -1 ] }, { name: "B" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "C" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""


def write_failing_model(repo: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["C"])], "failing",
        [helper.make_tensor_value_info("A", TensorProto.INT32, ["batch", "n"]),
         helper.make_tensor_value_info("B", TensorProto.INT32, ["batch", "m"])],
        [helper.make_tensor_value_info("C", TensorProto.INT32, ["batch", "k"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = repo / "failing" / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    (repo / "failing" / "config.pbtxt").write_text(FAILING)


def telemetry_repository(root: Path) -> Path:
    """simple (batching with a 300 ms delay), nobatch (fp32, no batching), failing (engine error),
    timeouts (every request times out in the queue)."""
    repo = root / "repository"
    write_model(repo, "simple", BATCHING)
    write_model(repo, "timeouts", TIMEOUTS)
    write_model(repo, "nobatch", 'name: "nobatch"\nmax_batch_size: 0\n', dtype=np.float32)
    write_failing_model(repo)
    return repo


@contextmanager
def traced_server(repo: Path, *trace_items: str, **settings: Any) -> Iterator[RunningServer]:
    telemetry = TelemetrySettings(metrics_port=0, trace_config=trace_items)
    with running_server(repo, telemetry=telemetry, **settings) as handle:
        yield handle


def stub_for(handle: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(handle.channel())


def simple_request(request_id: str = "", model: str = "simple", rows: int = 1) -> pb.ModelInferRequest:
    a = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    return pb.ModelInferRequest(
        model_name=model, id=request_id,
        inputs=[T(name="INPUT0", datatype="INT32", shape=[rows, 16]), T(name="INPUT1", datatype="INT32", shape=[rows, 16])],
        raw_input_contents=[a.tobytes(), a.tobytes()],
    )


def nobatch_request(request_id: str = "") -> pb.ModelInferRequest:
    a = np.ones((1, 16), np.float32)  # max_batch_size 0: the first dim is the model's own, not a batch
    return pb.ModelInferRequest(
        model_name="nobatch", id=request_id,
        inputs=[T(name="INPUT0", datatype="FP32", shape=[1, 16]), T(name="INPUT1", datatype="FP32", shape=[1, 16])],
        raw_input_contents=[a.tobytes(), a.tobytes()],
    )


def failing_request(request_id: str = "") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="failing", id=request_id,
        inputs=[T(name="A", datatype="INT32", shape=[1, 3]), T(name="B", datatype="INT32", shape=[1, 4])],
        raw_input_contents=[np.ones((1, 3), np.int32).tobytes(), np.ones((1, 4), np.int32).tobytes()],
    )


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Every span in an OTLP-JSON lines file, each with its resource attributes under "resource"."""
    spans = []
    if not path.exists():
        return spans
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            resource = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    spans.append({**span, "resource": resource, "scope": ss["scope"]})
    return spans


def flushed_spans(handle: RunningServer, path: Path) -> list[dict[str, Any]]:
    assert handle.server.telemetry.tracer.flush(10)
    return read_spans(path)


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    """A span's (or link's) attributes as plain Python values."""
    out: dict[str, Any] = {}
    for attr in item.get("attributes", []):
        value = attr["value"]
        if "intValue" in value:
            out[attr["key"]] = int(value["intValue"])
        else:
            out[attr["key"]] = next(iter(value.values()))
    return out


def scrape(handle: RunningServer) -> str:
    metrics = handle.server.telemetry.metrics
    assert metrics is not None
    with urllib.request.urlopen(metrics.url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(name, labels): value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(
            (k, v.strip('"')) for k, v in (item.split("=", 1) for item in rest.rstrip("}").split(",") if item)
        )
        out[(name, labels)] = float(value)
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    return condition()

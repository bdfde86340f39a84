"""The /metrics endpoint: Triton's names, values equal to what the test sent and to the statistics
extension, failure reasons, process/host/cache families, NVML when there is a GPU."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from telemetry_support import (
    BATCHING,
    TIMEOUTS,
    failing_request,
    scrape,
    simple_request,
    stub_for,
    value,
    write_failing_model,
)

from support import RunningServer, running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.server.telemetry import TelemetrySettings
from tensorgate.server.telemetry.metrics import GpuCollector

LIMITED = BATCHING.replace('name: "simple"', 'name: "limited"').replace(
    "dynamic_batching { max_queue_delay_microseconds: 300000 }",
    "dynamic_batching { max_queue_delay_microseconds: 3000000 default_queue_policy { max_queue_size: 1 } }",
)


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("metrics")
    write_model(repo, "simple", BATCHING)
    write_model(repo, "limited", LIMITED)
    write_model(repo, "timeouts", TIMEOUTS)
    write_failing_model(repo)
    with running_server(repo, telemetry=TelemetrySettings(metrics_port=0)) as handle:
        yield handle


def _stats(handle: RunningServer, model: str) -> pb.ModelStatistics:
    return stub_for(handle).ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]


def test_counts_equal_what_was_sent_and_the_statistics_extension(metrics_server: RunningServer) -> None:
    stub = stub_for(metrics_server)
    for rows in (1, 2, 3):
        stub.ModelInfer(simple_request(rows=rows), timeout=30)
    text = scrape(metrics_server)
    labels = {"model": "simple", "version": "1"}
    assert value(text, "nv_inference_request_success", **labels) == 3
    assert value(text, "nv_inference_count", **labels) == 6  # rows
    assert value(text, "nv_inference_exec_count", **labels) == 3
    assert value(text, "nv_inference_pending_request_count", **labels) == 0
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert value(text, "nv_inference_request_failure", **labels, reason=reason) == 0
    stats = _stats(metrics_server, "simple")
    infer = stats.inference_stats
    assert stats.inference_count == 6 and stats.execution_count == 3 and infer.success.count == 3
    for name, field in (("request", "success"), ("queue", "queue"), ("compute_input", "compute_input"),
                        ("compute_infer", "compute_infer"), ("compute_output", "compute_output")):
        assert value(text, f"nv_inference_{name}_duration_us", **labels) == getattr(infer, field).ns // 1000
    # each request waited out the 300 ms queue delay
    assert value(text, "nv_inference_queue_duration_us", **labels) >= 3 * 250_000
    assert value(text, "tensorgate_model_ready", **labels) == 1


def test_failures_are_counted_by_reason_and_agree_with_the_statistics(metrics_server: RunningServer) -> None:
    stub = stub_for(metrics_server)
    for _ in range(2):  # BACKEND: the engine refuses
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(failing_request(), timeout=30)
        assert info.value.code() == grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.RpcError) as info:  # REJECTED: timed out in the queue
        stub.ModelInfer(simple_request(model="timeouts"), timeout=30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # limited holds one request for 3 s: a second is REJECTED (queue full); a third is cancelled
    waiting = stub.ModelInfer.future(simple_request(model="limited"), timeout=30)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(simple_request(model="limited"), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "queue is full" in info.value.details()
    waiting.result()
    cancelled = stub.ModelInfer.future(simple_request(model="limited"), timeout=30)
    time.sleep(0.3)
    cancelled.cancel()
    time.sleep(0.3)
    text = scrape(metrics_server)

    def failures(model: str, reason: str) -> float:
        return value(text, "nv_inference_request_failure", model=model, version="1", reason=reason)

    assert failures("failing", "BACKEND") == 2 and failures("failing", "REJECTED") == 0
    assert failures("timeouts", "REJECTED") == 1
    assert failures("limited", "REJECTED") == 1 and failures("limited", "CANCELED") == 1
    for model in ("failing", "timeouts", "limited"):
        total = sum(failures(model, r) for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER"))
        assert total == _stats(metrics_server, model).inference_stats.fail.count  # one source
    assert value(text, "nv_inference_request_success", model="limited", version="1") == 1


def test_the_exposition_uses_tritons_names_and_parses(metrics_server: RunningServer) -> None:
    text = scrape(metrics_server)
    assert "# TYPE nv_inference_request_success counter" in text
    assert "nv_inference_request_success_total" not in text  # Triton's counters have no suffix
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"nv_inference_exec_count", "nv_cpu_utilization", "nv_cpu_memory_total_bytes",
            "nv_cpu_memory_used_bytes", "process_cpu_seconds", "process_resident_memory_bytes",
            "tensorgate_engine_cache_hits", "tensorgate_engine_build_seconds"} <= families
    assert 0.0 <= value(text, "nv_cpu_utilization") <= 1.0
    assert value(text, "nv_cpu_memory_total_bytes") > value(text, "nv_cpu_memory_used_bytes") > 0
    assert value(text, "tensorgate_engine_cache_hits_total") + value(text, "tensorgate_engine_cache_misses_total") >= 1
    metrics = metrics_server.server.telemetry.metrics
    assert metrics is not None
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(metrics.url.replace("/metrics", "/other"), timeout=10)
    assert info.value.code == 404


def test_gpu_families_only_with_a_gpu(metrics_server: RunningServer) -> None:
    text = scrape(metrics_server)
    if GpuCollector().gpus:
        assert "nv_gpu_utilization{" in text and "nv_gpu_memory_total_bytes{" in text
    else:
        assert "nv_gpu_" not in text


@pytest.mark.gpu
def test_nvml_reports_each_gpu() -> None:
    collector = GpuCollector()
    if not collector.gpus:
        pytest.skip("no NVIDIA GPU visible through NVML")
    names = {s.name: s for m in collector.collect() for s in m.samples}
    assert {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"} <= set(names)
    assert names["nv_gpu_utilization"].labels["gpu_uuid"].startswith("GPU-")
    assert 0.0 <= names["nv_gpu_utilization"].value <= 1.0


def test_allow_metrics_false_serves_none(telemetry_repo: Path) -> None:
    with running_server(telemetry_repo, telemetry=TelemetrySettings(allow_metrics=False)) as handle:
        assert handle.server.telemetry.metrics is None
        assert not any("metrics" in line for line in handle.server.summary())


def test_a_taken_metrics_port_leaves_inference_serving(telemetry_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running_server(telemetry_repo, telemetry=TelemetrySettings(metrics_port=port)) as handle:
            assert handle.server.telemetry.metrics is None
            assert any("metrics: disabled (cannot bind" in line for line in handle.server.summary())
            with ThreadPoolExecutor(2) as pool:
                ids = list(pool.map(lambda i: stub_for(handle).ModelInfer(simple_request(f"{i}")).id, range(2)))
            assert ids == ["0", "1"]

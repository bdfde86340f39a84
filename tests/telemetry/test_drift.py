"""Drift monitoring: the population stability index, classifier and embedding monitors, and a real
model whose reference comes from its calibration data and whose drift shows on /metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from telemetry_support import T, samples, scrape, stub_for, value

from support import running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.server.telemetry import TelemetrySettings
from tensorgate.server.telemetry.drift import DriftMonitor, psi

RNG = np.random.default_rng(7)


def test_psi_is_zero_for_the_same_population_and_large_for_a_shifted_one() -> None:
    reference = np.array([100.0, 200.0, 300.0, 400.0])
    assert psi(reference, reference * 3) == pytest.approx(0.0, abs=1e-9)
    assert psi(reference, np.array([400.0, 300.0, 200.0, 100.0])) > 0.25
    assert psi(reference, np.array([0.0, 0.0, 0.0, 10.0])) > 1.0  # empty bins are floored, not infinite


def test_a_classifier_monitor_counts_top_classes_and_scores_drift() -> None:
    monitor = DriftMonitor("m", "1", "OUT", "classifier", width=4, window=100, labels=["a", "b", "c", "d"])
    logits = RNG.normal(size=(400, 4))
    monitor.set_reference([logits])
    monitor.observe({"OUT": RNG.normal(size=(200, 4)).astype(np.float32)})
    steady = monitor.snapshot()
    assert steady["rows"] == 200 and steady["classes"].sum() == 200 and steady["psi"] < 0.1
    shifted = np.zeros((200, 4), np.float32)
    shifted[:, 2] = 5.0  # everything is class "c" now
    for _ in range(2):  # two windows of shifted rows push the steady ones out
        monitor.observe({"OUT": shifted})
    drifted = monitor.snapshot()
    assert drifted["classes"][2] >= 400 and drifted["psi"] > 0.25
    monitor.observe({"OTHER": shifted})  # an output this monitor does not watch (not requested): ignored
    monitor.observe({"OUT": np.zeros((3, 5), np.float32)})  # unexpected width: counted, never raises
    assert monitor.snapshot()["rows"] >= 600


def test_an_embedding_monitor_tracks_mean_norm_and_cosine() -> None:
    monitor = DriftMonitor("m", "1", "EMB", "embedding", width=8, window=50)
    base = RNG.normal(size=(500, 8)) + 3.0
    monitor.set_reference([base])
    monitor.observe({"EMB": (RNG.normal(size=(100, 8)) + 3.0).astype(np.float32)})
    steady = monitor.snapshot()
    assert steady["mean_cosine"] > 0.95 and steady["psi"] < 0.25
    assert steady["norm_mean"] == pytest.approx(np.linalg.norm(base, axis=1).mean(), rel=0.2)
    for _ in range(3):
        monitor.observe({"EMB": (RNG.normal(size=(100, 8)) * 4 - 3.0).astype(np.float32)})
    drifted = monitor.snapshot()
    assert drifted["psi"] > 0.25 and drifted["mean_cosine"] < steady["mean_cosine"]


def test_a_model_reports_drift_against_its_calibration_data(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = ('max_batch_size: 16\ndynamic_batching { }\n'
              'parameters { key: "drift_monitor" value: { string_value: "classifier" } }\n'
              'parameters { key: "drift_window" value: { string_value: "64" } }\n')
    model_dir = write_model(repo, "classifier", config, builder="mlp", sizes=(32, 16, 4))
    (model_dir / "calibration").mkdir()
    for i in range(4):  # 4 files x 32 rows, more rows per file than max_batch_size
        np.savez(model_dir / "calibration" / f"{i}.npz", INPUT0=RNG.normal(size=(32, 32)).astype(np.float32))
    with running_server(repo, telemetry=TelemetrySettings(metrics_port=0)) as handle:
        stub = stub_for(handle)

        def send(x: np.ndarray) -> None:
            stub.ModelInfer(pb.ModelInferRequest(
                model_name="classifier", inputs=[T(name="INPUT0", datatype="FP32", shape=list(x.shape))],
                raw_input_contents=[x.astype(np.float32).tobytes()]))

        for _ in range(8):
            send(RNG.normal(size=(16, 32)))
        labels = {"model": "classifier", "version": "1", "output": "OUTPUT0"}
        text = scrape(handle)
        assert value(text, "tensorgate_drift_reference_rows", **labels) == 128
        assert value(text, "tensorgate_drift_rows_total", **labels) == 128
        classes = {dict(k[1])["class"]: v for k, v in samples(text).items()
                   if k[0] == "tensorgate_drift_top_class_total"}
        assert sorted(classes) == ["0", "1", "2", "3"] and sum(classes.values()) == 128
        steady = value(text, "tensorgate_drift_psi", **labels)
        one_input = np.tile(RNG.normal(size=(1, 32)) * 5, (16, 1))  # one input over and over: one class
        for _ in range(8):
            send(one_input)
        drifted = value(scrape(handle), "tensorgate_drift_psi", **labels)
    assert steady < 0.25 < drifted

"""Calibration data loading and hold-out split; accuracy figures and the gate; the precision pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_models import mlp_model, write_calibration

from tensorgate.engines import AccuracyGateError, CalibrationError, EngineLoadError
from tensorgate.engines.accuracy import AccuracyReport, AccuracyThresholds, check_gate, measure_accuracy
from tensorgate.engines.cache import STATS, EngineCache
from tensorgate.engines.calibration import load_calibration
from tensorgate.engines.pipeline import prepare_artifact, prepare_ort_engine
from tensorgate.engines.precision import PrecisionSpec

F32 = {"INPUT0": np.dtype(np.float32)}


def test_calibration_rows_are_split_every_fourth_held_back(tmp_path: Path) -> None:
    write_calibration(tmp_path, "INPUT0", (8, 4), files=3)
    cal = load_calibration(tmp_path, F32, batching=True)
    assert cal is not None and cal.samples == 24
    assert sum(f["INPUT0"].shape[0] for f in cal.holdout) == 6
    assert sum(f["INPUT0"].shape[0] for f in cal.calibrate) == 18
    assert len(cal.files) == 3 and len(cal.digest) == 64


def test_calibration_casts_and_checks_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    np.savez(folder / "a.npz", INPUT0=np.ones((4, 2), np.float64))
    cal = load_calibration(tmp_path, F32, batching=True)
    assert cal is not None and cal.calibrate[0]["INPUT0"].dtype == np.float32
    np.savez(folder / "b.npz", OTHER=np.ones((4, 2), np.float32))
    with pytest.raises(CalibrationError, match=r"missing \['INPUT0'\], unexpected \['OTHER'\]"):
        load_calibration(tmp_path, F32, batching=True)


def test_too_little_calibration_data_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    np.savez(folder / "a.npz", INPUT0=np.ones((1, 2), np.float32))
    with pytest.raises(CalibrationError, match="at least 2"):
        load_calibration(tmp_path, F32, batching=True)
    assert load_calibration(tmp_path / "none", F32, batching=True) is None


def test_identical_models_measure_perfect(tmp_path: Path) -> None:
    mlp_model(tmp_path / "m.onnx")
    feeds = [{"INPUT0": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}]
    report = measure_accuracy(tmp_path / "m.onnx", tmp_path / "m.onnx", feeds, batching=True)
    assert report.samples == 8 and report.min_cosine == pytest.approx(1.0) and report.max_abs_error == 0.0
    assert report.top1_agreement == 1.0


def test_gate_refuses_with_every_figure() -> None:
    report = AccuracyReport(samples=12, min_cosine=0.97, mean_cosine=0.985, max_abs_error=0.2, top1_agreement=0.8)
    check_gate(report, AccuracyThresholds(min_cosine=0.95), "INT8")
    with pytest.raises(AccuracyGateError) as info:
        check_gate(report, AccuracyThresholds(min_cosine=0.99, max_abs_error=0.1, min_top1=0.9), "INT8")
    text = str(info.value)
    for part in ("INT8 artifact refused", "cosine 0.970000 < accuracy_min_cosine 0.99", "max abs error 0.2 > ",
                 "top-1 agreement 0.8000 < accuracy_min_top1 0.9", "on 12 holdout samples"):
        assert part in text
    assert AccuracyReport.from_dict(report.to_dict()) == report


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    mlp_model(tmp_path / "m" / "1" / "model.onnx", (64, 128, 10))
    write_calibration(tmp_path / "m", "INPUT0", (8, 64))
    return tmp_path / "m"


@pytest.mark.parametrize(
    ("spec", "min_cosine"),
    [(PrecisionSpec("FP16"), 0.9999), (PrecisionSpec("INT8", "static"), 0.99), (PrecisionSpec("INT8", "dynamic"), 0.99)],
)
def test_pipeline_artifacts_run_within_expected_error(model_dir: Path, tmp_path: Path, spec: PrecisionSpec,
                                                      min_cosine: float) -> None:
    import onnxruntime as ort

    cache = EngineCache(tmp_path / "cache")
    artifact = prepare_artifact(cache, model_dir / "1" / "model.onnx", spec, AccuracyThresholds(min_cosine), True)
    assert artifact.accuracy is not None and artifact.accuracy.min_cosine >= min_cosine
    assert artifact.accuracy.source == ("holdout" if spec.needs_calibration else "calibration")
    from tensorgate.engines.onnxruntime_engine import OrtOptions

    engine = prepare_ort_engine(cache, artifact, OrtOptions())
    x = np.random.default_rng(9).standard_normal((16, 64)).astype(np.float32)
    ref = ort.InferenceSession(str(model_dir / "1" / "model.onnx")).run(None, {"INPUT0": x})[0]
    got = ort.InferenceSession(str(engine.path)).run(None, {"INPUT0": x})[0]
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > min_cosine - 0.01


def test_thresholds_are_reapplied_to_a_cached_artifact(model_dir: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    model = model_dir / "1" / "model.onnx"
    spec = PrecisionSpec("INT8", "static")
    first = prepare_artifact(cache, model, spec, AccuracyThresholds(0.9), True)
    misses = STATS.snapshot()["misses"]
    with pytest.raises(AccuracyGateError, match="cosine"):
        prepare_artifact(cache, model, spec, AccuracyThresholds(0.9999999), True)
    again = prepare_artifact(cache, model, spec, AccuracyThresholds(0.9), True)
    assert again.cache_hit and again.key == first.key and STATS.snapshot()["misses"] == misses


def test_int8_static_without_calibration_data_says_where_to_put_it(tmp_path: Path) -> None:
    mlp_model(tmp_path / "m" / "1" / "model.onnx")
    with pytest.raises(EngineLoadError, match=r"calibration data: put \.npz files .* \(INPUT0\) in .*m/calibration/"):
        prepare_artifact(EngineCache(tmp_path / "c"), tmp_path / "m" / "1" / "model.onnx",
                         PrecisionSpec("INT8", "static"), AccuracyThresholds(), True)


def test_fp16_without_calibration_data_uses_synthetic_inputs(tmp_path: Path) -> None:
    mlp_model(tmp_path / "m" / "1" / "model.onnx")
    artifact = prepare_artifact(EngineCache(tmp_path / "c"), tmp_path / "m" / "1" / "model.onnx",
                                PrecisionSpec("FP16"), AccuracyThresholds(0.999), None)
    assert artifact.accuracy is not None and artifact.accuracy.source == "synthetic"

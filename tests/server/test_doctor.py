"""`tensorgate doctor`: a table on every machine; without a GPU or TensorRT it says what it could not check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tensorgate.engines.devices import probe_gpus
from tensorgate.engines.tensorrt import TrtDistribution
from tensorgate.server.doctor.report import FAILED, OK, SKIPPED, Row, Skip, failed, render, run_check
from tensorgate.server.doctor.tensorrt_checks import int8_layers
from tensorgate.server.doctor.versions import cuda_version_text, pairing_problem

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = probe_gpus()
CUDA_LAYER = ("pinned round trips", "stream overlap", "concurrent instances")


def _doctor(*args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    out = subprocess.run([sys.executable, "-m", "tensorgate.server.cli", "doctor", *args], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)
    table = out.stdout.split("tensorgate doctor", 1)[1]
    rows = {name: (status, detail) for name, status, detail in
            re.findall(r"^  (.+?)\s{2,}(ok|skipped|FAILED)\s+(.*)$", table, re.MULTILINE)}
    return out.returncode, rows, out.stdout + out.stderr


def test_doctor_checks_what_it_can_and_says_what_it_could_not() -> None:
    code, rows, text = _doctor()
    assert code == 0, text
    for name in ("cuda-python", "driver", "nvml", "tensorrt", "onnxruntime", "device discovery", *CUDA_LAYER):
        assert name in rows, text
    assert rows["onnxruntime"][0] == OK
    if PROBE.available:
        assert all(rows[c][0] == OK for c in ("device discovery", *CUDA_LAYER)), text
    else:
        assert rows["device discovery"] == (SKIPPED, PROBE.reason)
        assert all(rows[c] == (SKIPPED, "no GPU") for c in CUDA_LAYER), text
        assert f"GPU: none ({PROBE.reason}). Not checked: the CUDA layer" in text


@pytest.mark.slow
def test_doctor_full_builds_the_artifacts_and_names_every_tensorrt_check_it_skips() -> None:
    code, rows, text = _doctor("--full", "--instances", "2")
    assert code == 0, text
    status, detail = rows["precision artifacts"]
    assert status == OK and "FP16: cosine min" in detail and "INT8 static over fp16: cosine min" in detail, text
    trt_rows = {k: v for k, v in rows.items() if k.startswith("tensorrt ") or k.startswith("GPU memory")}
    assert len(trt_rows) >= 6, text
    if PROBE.available and rows["tensorrt"][0] == OK:
        assert all(s == OK for s, _ in trt_rows.values()), text
    else:
        reason = "no GPU" if not PROBE.available else "TensorRT is not installed"
        assert all(v == (SKIPPED, reason) for v in trt_rows.values()), text
        assert f"Not checked ({reason}): tensorrt plans" in text


def test_a_cuda_bindings_major_that_does_not_match_tensorrts_is_named() -> None:
    cu12 = TrtDistribution("tensorrt-cu12-libs", "10.16.1.11", 12)
    assert pairing_problem(cu12, "12.9.4") is None
    problem = pairing_problem(cu12, "13.5.0")
    assert problem is not None and "cuda-bindings 13.5.0 (CUDA 13) beside tensorrt-cu12-libs" in problem
    assert "tensorgate[tensorrt-cu12]" in problem
    assert pairing_problem(None, "13.5.0") is None
    assert pairing_problem(TrtDistribution("tensorrt", "10.13.0.35", 0), "13.5.0") is None
    assert cuda_version_text(13040) == "13.4" and cuda_version_text(12090) == "12.9"


def test_int8_kernels_are_read_from_the_inspector_json() -> None:
    info = {"Layers": [
        {"Name": "fc0", "LayerType": "CaskGemmMatrixMultiply", "Inputs": [{"Format/Datatype": "Int8 NC/32HW32"}],
         "Outputs": [{"Format/Datatype": "Half"}]},
        {"Name": "q", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Int8"}], "Outputs": []},
        {"Name": "dq", "LayerType": "Dequantize", "Inputs": [{"Format/Datatype": "Int8"}], "Outputs": []},
        {"Name": "softmax", "LayerType": "Softmax", "Inputs": [{"Format/Datatype": "Half"}],
         "Outputs": [{"Format/Datatype": "Float"}]},
        "a layer name only (LAYER_NAMES_ONLY verbosity)",
    ], "Bindings": ["INPUT0", "OUTPUT0"]}
    assert int8_layers(json.dumps(info)) == (1, 5)
    assert int8_layers(json.dumps({"Layers": []})) == (0, 0)


def test_rows_say_ok_skipped_or_failed() -> None:
    rows: list[Row] = []

    def skip() -> str:
        raise Skip("no GPU")

    def fail() -> str:
        raise RuntimeError("driver 12.2 is older than the CUDA runtime 13.0")

    assert run_check(rows, "a", lambda: "fine") and not run_check(rows, "b", skip) and not run_check(rows, "c", fail)
    assert [r.status for r in rows] == [OK, SKIPPED, FAILED] and failed(rows) and not failed(rows[:2])
    text = render(rows, "title", ["footer"])
    assert text.splitlines() == ["title", "  a  ok       fine", "  b  skipped  no GPU",
                                 "  c  FAILED   RuntimeError: driver 12.2 is older than the CUDA runtime 13.0",
                                 "  footer"]


def test_cuda_errors_are_named_by_their_own_api() -> None:
    pytest.importorskip("cuda.bindings")
    from cuda.bindings import driver, runtime

    from tensorgate.engines.tensorrt.cuda import CudaError, check

    with pytest.raises(CudaError, match=r"cuModuleLoadData failed: CUDA_ERROR_INVALID_PTX \(218\)"):
        check((driver.CUresult.CUDA_ERROR_INVALID_PTX, None), "cuModuleLoadData")
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(2\)"):
        check((runtime.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    assert check((runtime.cudaError_t.cudaSuccess, 7), "ok") == 7
    assert check(driver.CUresult.CUDA_SUCCESS, "ok") is None


def test_bench_gpu_check_forwards_to_the_doctor() -> None:
    import tensorgate.bench.gpu_check
    import tensorgate.server.doctor

    assert tensorgate.bench.gpu_check.run_doctor is tensorgate.server.doctor.run_doctor

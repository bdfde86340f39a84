"""Issue 16's review of the TensorRT path: every rule that can be separated from TensorRT, on plain data.

Each test names the item it covers. Where the rule needs a TensorRT object, the code reads the facts off it
once (``io.read_io``, ``runtime.find_distribution``) and the rule takes those facts; nothing here stands in
for TensorRT or CUDA.
"""

from __future__ import annotations

import configparser
import enum
import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_models import mlp_model, write_calibration
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from packaging.requirements import Requirement

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import EngineLoadError, TensorSpec
from tensorgate.engines.accuracy import (
    AccuracyGateError,
    AccuracyThresholds,
    check_gate,
    measure_engine,
    split_feeds,
)
from tensorgate.engines.cache import EngineCache, cache_key
from tensorgate.engines.onnxruntime_engine import OnnxRuntimeEngine
from tensorgate.engines.pipeline import prepare_artifact
from tensorgate.engines.precision import PrecisionSpec, measure_loaded
from tensorgate.engines.quantize import ensure_opset, lint_trt_qdq, model_opset, quantize_int8_static
from tensorgate.engines.tensorrt import (
    BuildOptions,
    IoTensor,
    LogSink,
    StalePlanError,
    TrtDistribution,
    assign_profiles,
    check_io,
    compute_profiles,
    find_distribution,
    hardware_level,
    load_with_rebuild,
    profiles_needed,
)
from tensorgate.engines.tensorrt.runtime import ERROR, INFO, INTERNAL_ERROR, VERBOSE, WARNING
from tensorgate.server.engine_options import OptionError, parse_engine_options

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- 2: one optimization profile per concurrent execution context -------------------------------------------

def test_each_instance_on_a_gpu_gets_its_own_profile() -> None:
    assert assign_profiles([0, 0, 1, 0, 1], 3) == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1)]
    assert profiles_needed([0, 0, 1, 0, 1]) == 3 and profiles_needed([]) == 1 and profiles_needed([2]) == 1
    with pytest.raises(EngineLoadError, match="GPU 0 has 3 instances but the plan has 2 optimization profile"):
        assign_profiles([0, 0, 0], 2)


# ---- 3: hardware compatibility: wired from config, refused when TensorRT lacks it --------------------------

Levels = enum.Enum("Levels", ["NONE", "AMPERE_PLUS"])


def test_a_hardware_level_this_tensorrt_lacks_is_refused_not_dropped() -> None:
    assert hardware_level(Levels, True, "NONE") is None
    assert hardware_level(Levels, True, "AMPERE_PLUS") is Levels.AMPERE_PLUS
    for levels, has_attr in ((Levels, True), (None, True), (Levels, False)):
        requested = "SAME_COMPUTE_CAPABILITY" if levels is Levels and has_attr else "AMPERE_PLUS"
        with pytest.raises(EngineLoadError, match=f"{requested} is not supported by the installed TensorRT"):
            hardware_level(levels, has_attr, requested)
    with pytest.raises(EngineLoadError, match="must be one of NONE, AMPERE_PLUS, SAME_COMPUTE_CAPABILITY"):
        BuildOptions(hardware_compatibility="TURING_PLUS")


def _trt_config(*params: tuple[str, str]) -> mc.ModelConfig:
    body = "".join(f'parameters {{ key: "{k}" value: "{v}" }} ' for k, v in params)
    text = ('name: "m" max_batch_size: 8 optimization { execution_accelerators { gpu_execution_accelerator '
            f'[ {{ name: "tensorrt" {body} }} ] }} }}')
    return text_format.Parse(text, mc.ModelConfig())


def test_hardware_level_and_fp16_base_come_from_the_config() -> None:
    options = parse_engine_options(_trt_config(("precision_mode", "INT8"),
                                               ("trt_hardware_compatibility_level", "ampere_plus")))
    assert options.trt.hardware_compatibility == "AMPERE_PLUS"
    assert options.gpu.int8_fp16_base and not options.cpu.int8_fp16_base  # default on for TensorRT only
    off = parse_engine_options(_trt_config(("precision_mode", "INT8"), ("int8_fp16_base", "false")))
    assert not off.gpu.int8_fp16_base and off.trt.hardware_compatibility == "NONE"
    with pytest.raises(OptionError, match="trt_hardware_compatibility_level must be one of"):
        parse_engine_options(_trt_config(("trt_hardware_compatibility_level", "ALL")))
    with pytest.raises(OptionError, match="int8_fp16_base must be true or false"):
        parse_engine_options(_trt_config(("int8_fp16_base", "maybe")))


# ---- 4: keyed on the TensorRT distribution; a stale plan is dropped and rebuilt once --------------------------

def test_the_distribution_says_which_cuda_tensorrt_was_built_for() -> None:
    cu13 = find_distribution({"tensorrt": "11.4.0.106", "tensorrt_cu13": "11.4.0.106",
                              "tensorrt_cu13_libs": "11.4.0.106", "tensorrt_cu13_bindings": "11.4.0.106",
                              "cuda-bindings": "13.0.1"})
    assert cu13 == TrtDistribution("tensorrt-cu13-libs", "11.4.0.106", 13)
    cu12 = find_distribution({"tensorrt-cu12": "11.4.0.106", "tensorrt-cu12-bindings": "11.4.0.106"})
    assert cu12 == TrtDistribution("tensorrt-cu12", "11.4.0.106", 12)
    assert cache_key(cu12.key_fields()) != cache_key(cu13.key_fields())
    assert find_distribution({"tensorrt": "10.13.0.35"}) == TrtDistribution("tensorrt", "10.13.0.35", 0)
    assert find_distribution({"tensorrt-lean-cu13": "11.4.0.106", "numpy": "2.0"}) is None


def test_a_plan_that_does_not_deserialize_is_rebuilt_once() -> None:
    built: list[int] = []
    discarded: list[int] = []

    def prepare() -> int:
        built.append(len(built))
        return built[-1]

    def load_second(plan: int) -> str:
        if plan == 0:
            raise StalePlanError("stale", 0, Path("model.plan"))
        return f"engine from plan {plan}"

    assert load_with_rebuild(prepare, load_second, lambda plan, exc: discarded.append(plan)) == "engine from plan 1"
    assert discarded == [0]

    def load_never(plan: int) -> str:
        raise StalePlanError(f"stale {plan}", 0, Path("model.plan"))

    built.clear()
    discarded.clear()
    with pytest.raises(StalePlanError, match="stale 1"):  # the rebuilt plan fails too: no third try
        load_with_rebuild(prepare, load_never, lambda plan, exc: discarded.append(plan))
    assert built == [0, 1] and discarded == [0]


def test_a_discarded_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    fields = {"what": "plan"}
    key = cache_key(fields)
    builds: list[int] = []

    def build(out: Path) -> dict[str, int]:
        builds.append(1)
        (out / "model.plan").write_bytes(b"plan %d" % len(builds))
        return {}

    cache.get_or_build("gpu-x", key, fields, build)
    assert cache.get_or_build("gpu-x", key, fields, build)[1] is True
    assert cache.discard("gpu-x", key) and not cache.discard("gpu-x", key)
    entry, hit = cache.get_or_build("gpu-x", key, fields, build)
    assert not hit and entry.file("model.plan").read_bytes() == b"plan 2"


# ---- 5: cuda-bindings pinned per CUDA major beside tensorrt-cuNN ----------------------------------------------

def test_extras_pin_cuda_bindings_to_tensorrts_cuda_major() -> None:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO_ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    for major in (12, 13):
        lines = [line.strip() for line in extras[f"tensorrt-cu{major}"].splitlines()]
        reqs = {r.name: r for r in (Requirement(line) for line in lines if line and not line.startswith(("#", "%")))}
        assert f"tensorrt-cu{major}" in reqs, lines
        spec = reqs["cuda-bindings"].specifier
        assert spec.contains(f"{major}.9.0") and not spec.contains(f"{major + 1}.0.0"), spec
        assert not spec.contains(f"{major - 1}.9.0"), spec
    assert "tensorrt" not in extras  # the unpinned extra resolved cuda-bindings 13 beside a cu12 TensorRT


# ---- 6: the accuracy gate measures the engine that serves -------------------------------------------------------

def test_the_gate_measures_the_loaded_engine_not_the_artifact(tmp_path: Path) -> None:
    model = tmp_path / "m" / "1" / "model.onnx"
    mlp_model(model, (64, 128, 10))
    write_calibration(tmp_path / "m", "INPUT0", (12, 64))
    other = tmp_path / "other.onnx"
    mlp_model(other, (64, 128, 10), seed=7)  # stands for an engine that computes something else
    same = OnnxRuntimeEngine(model).create_instance()
    report = measure_loaded(same, model, PrecisionSpec("INT8", "static"), True, max_batch=4)
    assert report is not None and report.min_cosine > 0.99999 and report.source == "holdout"
    assert report.samples == 4 * 3  # every 4th of 48 rows, run in batches of at most 4
    wrong = OnnxRuntimeEngine(other).create_instance()
    bad = measure_loaded(wrong, model, PrecisionSpec("FP16"), True, max_batch=4)
    assert bad is not None and bad.source == "calibration"
    with pytest.raises(AccuracyGateError, match="TensorRT FP16 plan artifact refused by the accuracy gate"):
        check_gate(bad, AccuracyThresholds.defaults("FP16"), "TensorRT FP16 plan")
    assert AccuracyThresholds.defaults("FP32").min_cosine == 0.999  # an FP32 plan runs TF32 tactics


def test_feeds_are_split_to_the_engines_largest_batch(tmp_path: Path) -> None:
    feeds = [{"x": np.arange(10.0).reshape(10, 1), "y": np.zeros((10, 2))}, {"x": np.ones((3, 1)), "y": np.ones((3, 2))}]
    parts = split_feeds(feeds, 4)
    assert [p["x"].shape[0] for p in parts] == [4, 4, 2, 3]
    assert np.array_equal(np.concatenate([p["x"] for p in parts[:3]]), feeds[0]["x"])
    assert split_feeds(feeds, 0) == feeds
    mlp_model(tmp_path / "m.onnx", (8, 16, 4))
    instance = OnnxRuntimeEngine(tmp_path / "m.onnx").create_instance()
    x = np.random.default_rng(0).standard_normal((9, 8)).astype(np.float32)
    report = measure_engine(tmp_path / "m.onnx", instance, [{"INPUT0": x}], True, "calibration", max_batch=2)
    assert report.samples == 9 and report.max_abs_error == 0.0


# ---- 7 and 8: INT8 over an fp16 base; the opset is converted or refused ----------------------------------------

def _opset11_mlp(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.3).astype(np.float32), "W0"),
             numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "B0"),
             numpy_helper.from_array((rng.standard_normal((32, 4)) * 0.3).astype(np.float32), "W1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "B1")]
    nodes = [helper.make_node("Gemm", ["INPUT0", "W0", "B0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W1", "B1"], ["l"]), helper.make_node("Softmax", ["l"], ["OUTPUT0"], axis=1)]
    graph = helper.make_graph(nodes, "mlp11", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["b", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _feeds(width: int, n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"INPUT0": rng.standard_normal((16, width)).astype(np.float32)} for _ in range(n)]


def test_an_old_opset_is_converted_before_per_channel_qdq(tmp_path: Path) -> None:
    import onnxruntime as ort

    _opset11_mlp(tmp_path / "m.onnx")
    facts = quantize_int8_static(tmp_path / "m.onnx", tmp_path / "q.onnx", _feeds(16), work_dir=tmp_path)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert model_opset(q) >= 13 and facts["opset"] >= 13 and not lint_trt_qdq(q)
    axes = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes  # per-channel weights
    x = _feeds(16, 1)[0]
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, x)[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, x)[0]
    assert np.abs(want - got).max() < 0.05


def test_an_opset_that_cannot_be_converted_is_refused_clearly(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("ScaledTanh", ["X"], ["Y"])], "old",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    model.ir_version = 7
    with pytest.raises(EngineLoadError, match=r"the model is at opset 1; per-channel Q/DQ needs opset 13 or later "
                                              r"and onnx cannot convert it .*re-export the model at opset 13"):
        ensure_opset(model, 13, "per-channel Q/DQ")
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(EngineLoadError, match="needs opset 13"):
        quantize_int8_static(tmp_path / "old.onnx", tmp_path / "q.onnx", [], work_dir=tmp_path)


def test_int8_over_an_fp16_base_keeps_only_qdq_and_io_in_fp32(tmp_path: Path) -> None:
    model = tmp_path / "m" / "1" / "model.onnx"
    mlp_model(model, (64, 128, 10))
    write_calibration(tmp_path / "m", "INPUT0", (8, 64))
    cache = EngineCache(tmp_path / "cache")
    base = prepare_artifact(cache, model, PrecisionSpec("INT8", "static", int8_fp16_base=True),
                            AccuracyThresholds.defaults("INT8"), True)
    plain = prepare_artifact(cache, model, PrecisionSpec("INT8", "static"), AccuracyThresholds.defaults("INT8"), True)
    assert base.key != plain.key
    q = onnx.load(str(base.path))
    assert model_opset(q) >= 19 and not lint_trt_qdq(q)
    inits = {t.name: t.data_type for t in q.graph.initializer}
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and set(scales) == {TensorProto.FLOAT16}
    floats = {t for t in inits.values() if t in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert floats == {TensorProto.FLOAT16}  # no fp32 weights or biases left
    io = [v.type.tensor_type.elem_type for v in (*q.graph.input, *q.graph.output)]
    assert set(io) == {TensorProto.FLOAT}
    assert base.accuracy is not None and base.accuracy.min_cosine > 0.99
    assert plain.accuracy is not None and not any(t == TensorProto.FLOAT16 for t in
                                                  (i.data_type for i in onnx.load(str(plain.path)).graph.initializer))


# ---- 9 and 12: I/O tensorgate cannot serve is refused at load -------------------------------------------------

def test_io_types_numpy_lacks_and_shape_tensors_are_refused() -> None:
    ok = [IoTensor("ids", True, "INT64", (-1, -1)), IoTensor("out", False, "HALF", (-1, 384))]
    assert check_io(ok) == {"ids": np.dtype(np.int64), "out": np.dtype(np.float16)}
    for dtype in ("BF16", "FP8", "INT4", "FP4"):
        with pytest.raises(EngineLoadError, match=f"tensor 'out' has TensorRT type {dtype}, which tensorgate "
                                                  "cannot serve"):
            check_io([IoTensor("out", False, dtype, (1,))])
    with pytest.raises(EngineLoadError, match=r"shape tensor I/O \['shape'\]"):
        check_io([*ok, IoTensor("shape", True, "INT32", (2,), is_shape_tensor=True)])


# ---- 10: the logger filters first and captures errors per call ---------------------------------------------------

def test_logger_filters_early_and_captures_errors_per_call(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(WARNING)
    caplog.set_level(logging.DEBUG, logger="tensorgate.engines.tensorrt")
    sink.emit(VERBOSE, "tactic 17 chosen")
    sink.emit(INFO, "loaded")
    assert "tactic 17" not in caplog.text and "loaded" not in caplog.text
    sink.emit(ERROR, "outside any call")  # logged, kept by nobody
    with sink.capture() as first:
        sink.emit(ERROR, "first failure")
        sink.emit(WARNING, "a warning")
        with sink.capture() as inner:
            sink.emit(INTERNAL_ERROR, "inner failure")
    with sink.capture() as second:
        pass
    assert first == ["first failure", "inner failure"] and inner == ["inner failure"] and second == []
    other: list[list[str]] = []

    def elsewhere() -> None:
        with sink.capture() as errors:
            sink.emit(ERROR, "other thread")
            other.append(errors)

    with sink.capture() as mine:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert mine == [] and other == [["other thread"]]
    assert "outside any call" in caplog.text and "a warning" in caplog.text


# ---- 13: a fixed batch dim with max_batch_size > 0 ---------------------------------------------------------------

def test_a_fixed_onnx_batch_dim_is_refused_before_tensorrt_builds() -> None:
    with pytest.raises(EngineLoadError, match=r"input 'x' has a fixed first dim 8 in the ONNX model \(shape "
                                              r"\[8, 16\]\), but max_batch_size 8 makes it the batch axis"):
        compute_profiles([TensorSpec("x", "FP32", (8, 16))], 8)
    with pytest.raises(EngineLoadError, match="fixed first dim 1"):
        compute_profiles([TensorSpec("x", "FP32", (1, 16))], 4)
    (p,) = compute_profiles([TensorSpec("x", "FP32", (1, 16))], 1)
    assert (p.min, p.max) == ((1, 16), (1, 16))
    assert compute_profiles([TensorSpec("x", "FP32", (8, 16))], 0)[0].max == (8, 16)

"""INT8 artifacts through onnxruntime.quantization: static Q/DQ (TensorRT-valid) and dynamic (CPU only).

Static INT8 writes explicit QuantizeLinear/DequantizeLinear with the settings
TensorRT accepts (spec/tensorrt.md §1): int8 activations and weights (never
uint8), symmetric with zero point 0, per-channel weights, Q/DQ pairs on the
weights, no int32 bias Q/DQ. ONNX Runtime's defaults break two of these, so
``lint_trt_qdq`` checks every artifact before it is accepted. The same file
runs on ONNX Runtime's CPU provider, so the CPU and GPU engines share one
calibration.

Per-channel Q/DQ needs opset 13 (the ``axis`` attribute) and fp16 scales need
opset 19, so the model is converted with onnx's version converter first (ONNX
Runtime's quantizer would only relabel the opset, leaving ops with their old
semantics) or refused with the reason.

For TensorRT, ``fp16_base`` writes the Q/DQ pairs over an fp16 graph: a
strongly typed engine runs every layer outside a Q/DQ pair in the precision the
ONNX gives it, so an fp32 base would make INT8 slower than FP16.

Dynamic INT8 quantizes weights offline and activations per batch at run time;
TensorRT cannot run it (it needs Q/DQ), so it is a CPU-only method.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, version_converter

from .base import EngineLoadError
from .calibration import Feed, FeedReader

__all__ = [
    "FP16_QDQ_OPSET",
    "MIN_QDQ_OPSET",
    "STATIC_OP_TYPES",
    "TRT_EXTRA_OPTIONS",
    "ensure_opset",
    "excluded_nodes",
    "lint_trt_qdq",
    "model_opset",
    "quantize_int8_dynamic",
    "quantize_int8_static",
]

log = logging.getLogger("tensorgate.engines.quantize")

MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)
FP16_QDQ_OPSET = 19  # float16 scales on QuantizeLinear/DequantizeLinear

# Q/DQ goes on the inputs of weighted ops (TensorRT fuses DQ->op->Q around them);
# Softmax, LayerNorm and friends stay in float
STATIC_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "GRU")
# Optimum's AutoQuantizationConfig.tensorrt(): symmetric, Q/DQ on weights, no bias quantization
TRT_EXTRA_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": True,
}


def excluded_nodes(model: onnx.ModelProto, patterns: Sequence[str], op_types: Sequence[str]) -> list[str]:
    """Names of the nodes to keep in float: names matching a glob pattern, or of an excluded op type.

    Args:
        model: the model to be quantized.
        patterns: node names or fnmatch patterns ("encoder.layer.*.output.dense.matmul").
        op_types: op types to exclude ("Gather", "MatMul").

    Returns:
        Matching node names (unnamed nodes cannot be excluded by name).
    """
    ops = set(op_types)
    out = []
    for node in model.graph.node:
        if node.op_type in ops or (node.name and any(fnmatch.fnmatchcase(node.name, p) for p in patterns)):
            out.append(node.name)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n.name, p) for n in model.graph.node)]
    if unmatched:
        log.warning("int8 exclusions match no node: %s", ", ".join(unmatched))
    return [n for n in out if n]


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ensure_opset(model: onnx.ModelProto, minimum: int, why: str) -> onnx.ModelProto:
    """The model at opset ``minimum`` or later: itself, or converted by onnx's version converter.

    Args:
        model: the model.
        minimum: the opset needed.
        why: what needs it, for the message.

    Returns:
        The model, converted when its opset was lower.

    Raises:
        EngineLoadError: the converter cannot convert the model.
    """
    current = model_opset(model)
    if current >= minimum:
        return model
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise EngineLoadError(
            f"the model is at opset {current}; {why} needs opset {minimum} or later and onnx cannot convert it "
            f"({type(exc).__name__}: {str(exc)[:200]}): re-export the model at opset {minimum} or later"
        ) from exc
    log.info("model converted from opset %d to %d (%s)", current, minimum, why)
    return converted


def _at_opset(model_path: Path, minimum: int, why: str, out: Path) -> Path:
    model = onnx.load(str(model_path))
    converted = ensure_opset(model, minimum, why)
    if converted is model:
        return model_path
    onnx.save(converted, str(out))
    return out


def _fp16_base(quantized: onnx.ModelProto) -> onnx.ModelProto:
    """The Q/DQ model with fp16 everywhere outside the pairs (fp16 scales; fp32 inputs and outputs kept)."""
    from .fp16 import convert_fp16

    return convert_fp16(ensure_opset(quantized, FP16_QDQ_OPSET, "INT8 over an fp16 base (fp16 Q/DQ scales)"))


def _preprocess(model_path: Path, out: Path) -> Path:
    """ORT's recommended pre-pass (shape inference, basic optimisation); without sympy's symbolic pass."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(model_path), str(out), skip_symbolic_shape=True)
    except Exception as exc:  # a model the pre-pass cannot handle still quantizes without it
        log.warning("quantization pre-processing skipped for %s: %s", model_path.name, exc)
        return model_path
    return out


def _name_nodes(model_path: Path, out: Path) -> Path:
    model = onnx.load(str(model_path))
    taken = {n.name for n in model.graph.node if n.name}
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name, changed = name, True
            taken.add(name)
    if not changed:
        return model_path
    onnx.save(model, str(out))
    return out


def quantize_int8_static(
    model_path: Path,
    out_path: Path,
    feeds: Sequence[Feed],
    *,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    work_dir: Path,
    fp16_base: bool = False,
) -> dict[str, Any]:
    """Calibrate on ``feeds`` (MinMax) and write TensorRT-valid Q/DQ ONNX.

    Args:
        model_path: the fp32 model.
        out_path: where the Q/DQ model goes.
        feeds: calibration batches.
        exclude_nodes: node names or glob patterns to keep in float.
        exclude_op_types: op types to keep in float.
        work_dir: scratch folder.
        fp16_base: everything outside the Q/DQ pairs in fp16 (opset 19 or later).

    Returns:
        Facts for the manifest (how many nodes were excluded, how many Q/DQ pairs written).

    Raises:
        EngineLoadError: calibration or quantization failed, the model's opset cannot be converted, or the
            result breaks TensorRT's rules.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    at_opset = _at_opset(model_path, MIN_QDQ_OPSET, "per-channel Q/DQ", work_dir / "opset.onnx")
    pre = _preprocess(_name_nodes(at_opset, work_dir / "named.onnx"), work_dir / "pre.onnx")
    excluded = excluded_nodes(onnx.load(str(pre), load_external_data=False), exclude_nodes, exclude_op_types)
    try:
        quantize_static(
            str(pre),
            str(out_path),
            FeedReader(feeds),  # ORT's CalibrationDataReader protocol is duck-typed
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(TRT_EXTRA_OPTIONS),
        )
    except Exception as exc:
        raise EngineLoadError(f"INT8 static quantization failed: {type(exc).__name__}: {exc}") from exc
    quantized = onnx.load(str(out_path))
    if fp16_base:
        quantized = _fp16_base(quantized)
        onnx.save(quantized, str(out_path))
    problems = lint_trt_qdq(quantized)
    if problems:
        raise EngineLoadError("INT8 artifact breaks TensorRT's Q/DQ rules: " + "; ".join(problems[:5]))
    pairs = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return {"excluded_nodes": len(excluded), "quantize_linear_nodes": pairs, "fp16_base": fp16_base,
            "opset": model_opset(quantized)}


def quantize_int8_dynamic(
    model_path: Path,
    out_path: Path,
    *,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    work_dir: Path,
) -> dict[str, Any]:
    """Per-channel int8 weights, activations quantized per batch at run time (ONNX Runtime CPU only).

    Args:
        model_path: the fp32 model.
        out_path: where the quantized model goes.
        exclude_nodes: node names or glob patterns to keep in float.
        exclude_op_types: op types to keep in float.
        work_dir: scratch folder.

    Returns:
        Facts for the manifest.

    Raises:
        EngineLoadError: quantization failed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _preprocess(_name_nodes(model_path, work_dir / "named.onnx"), work_dir / "pre.onnx")
    excluded = excluded_nodes(onnx.load(str(pre), load_external_data=False), exclude_nodes, exclude_op_types)
    try:
        quantize_dynamic(
            str(pre),
            str(out_path),
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
    except Exception as exc:
        raise EngineLoadError(f"INT8 dynamic quantization failed: {type(exc).__name__}: {exc}") from exc
    return {"excluded_nodes": len(excluded)}


def lint_trt_qdq(model: onnx.ModelProto) -> list[str]:
    """What in a Q/DQ model TensorRT would refuse: non-int8 or non-zero zero points, int32 (bias) DQ.

    Args:
        model: a Q/DQ model.

    Returns:
        One line per problem; empty when the model follows the rules.
    """
    inits = {t.name: t for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        source = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and source is not None and source.data_type == TensorProto.INT32:
            problems.append(f"{node.name or node.output[0]}: int32 DequantizeLinear (bias quantization)")
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{node.name or node.output[0]}: no zero point (defaults to uint8)")
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue  # computed zero points do not occur in ORT's output
        if zp.data_type != TensorProto.INT8:
            problems.append(f"{node.name or node.output[0]}: zero point is {TensorProto.DataType.Name(zp.data_type)}")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{node.name or node.output[0]}: zero point is not 0 (asymmetric)")
    return problems

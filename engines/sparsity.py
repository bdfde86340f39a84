"""2:4 structured pruning of an ONNX model's weight matrices (a step of the precision pipeline).

In every group of four consecutive weights along the reduction (input-channel)
axis, the two of smallest magnitude become zero: the pattern sparse tensor
cores (NVIDIA Ampere and newer, compute capability 8.0+) skip, which TensorRT
uses when a plan is built with ``BuilderFlag.SPARSE_WEIGHTS``. Eligible weights
are float initializers feeding MatMul (input B, [K, N]: groups along K), Gemm
(B, along K whichever way ``transB`` stores it) and Conv ([O, C/g, kh, kw]:
groups along C), whose reduction axis is a multiple of 4. Nodes can be kept
dense by name or glob pattern (``sparsity_exclude_nodes``). ONNX Runtime on a
CPU runs the zeros as ordinary multiplications: pruning there costs accuracy
and buys no speed, which is why the accuracy gate checks every pruned artifact.

``python -m tensorgate.engines.sparsity MODEL.onnx [CALIBRATION_DIR] [--by node|kind|block]``
prunes one layer (or one kind of layer, or one block) at a time and prints its
accuracy against fp32: which layers keep accuracy.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from .base import EngineLoadError

__all__ = ["SPARSITY_PATTERNS", "PrunedLayer", "eligible_layers", "is_2_4_sparse", "prune_2_4", "prune_weight"]

SPARSITY_PATTERNS = ("2:4",)
_GROUP = 4
_KEEP = 2


@dataclass(frozen=True)
class PrunedLayer:
    """One weight matrix the pruning step looked at.

    Args:
        node: the node's name (or "<op_type>#<index>" when unnamed).
        op_type: MatMul, Gemm or Conv.
        weight: the initializer's name.
        shape: the weight's shape.
        axis: the reduction axis the 2:4 groups run along.
        pruned: whether it was pruned; ``reason`` says why not.
        reason: "" when pruned; else "excluded", "reduction dim N is not a multiple of 4", ...
    """

    node: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    axis: int
    pruned: bool
    reason: str = ""


def prune_weight(weight: npt.NDArray[Any], axis: int) -> npt.NDArray[Any]:
    """Zero the two smallest-magnitude values of every group of four along ``axis``."""
    if weight.shape[axis] % _GROUP:
        raise ValueError(f"axis {axis} of shape {weight.shape} is not a multiple of {_GROUP}")
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(-1, _GROUP)
    order = np.argsort(np.abs(groups), axis=1, kind="stable")
    mask = np.ones_like(groups, dtype=bool)
    np.put_along_axis(mask, order[:, : _GROUP - _KEEP], False, axis=1)
    pruned = np.where(mask, groups, np.zeros((), dtype=weight.dtype)).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(pruned, -1, axis))


def is_2_4_sparse(weight: npt.NDArray[Any], axis: int) -> bool:
    """At most two non-zeros in every group of four along ``axis``."""
    groups = np.moveaxis(weight, axis, -1).reshape(-1, _GROUP)
    return bool(((groups != 0).sum(axis=1) <= _KEEP).all())


def _weight_axis(node: onnx.NodeProto, dims: tuple[int, ...]) -> tuple[int, int] | None:
    """(input index of the weight, reduction axis), or None for a node kind that has no such weight."""
    if node.op_type == "MatMul" and len(dims) == 2:
        return 1, 0
    if node.op_type == "Gemm" and len(dims) == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1, 1 if trans_b else 0
    if node.op_type == "Conv" and len(dims) >= 3:
        return 1, 1
    return None


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def eligible_layers(model: onnx.ModelProto, exclude_nodes: Sequence[str] = ()) -> list[PrunedLayer]:
    """Every MatMul/Gemm/Conv with a float initializer weight, and whether 2:4 pruning applies to it."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers: list[PrunedLayer] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None:
            continue
        dims = tuple(int(d) for d in weight.dims)
        found = _weight_axis(node, dims)
        name = node.name or f"{node.op_type}#{index}"
        if found is None:
            continue
        _, axis = found
        reason = ""
        if weight.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            reason = "not a float weight"
        elif _excluded(name, exclude_nodes):
            reason = "excluded (sparsity_exclude_nodes)"
        elif dims[axis] % _GROUP:
            reason = f"reduction dim {dims[axis]} is not a multiple of {_GROUP}"
        elif uses.get(weight.name, 0) > 1:
            reason = "weight shared with another node"
        layers.append(PrunedLayer(name, node.op_type, weight.name, dims, axis, not reason, reason))
    return layers


def prune_2_4(model: onnx.ModelProto, exclude_nodes: Sequence[str] = (),
              only: Sequence[str] | None = None) -> tuple[onnx.ModelProto, list[PrunedLayer]]:
    """A copy of ``model`` with every eligible weight pruned 2:4.

    Args:
        model: the fp32 model.
        exclude_nodes: node names or glob patterns kept dense.
        only: prune just these node names (the per-layer sensitivity report); None = every eligible one.

    Returns:
        The pruned model and what happened to each candidate layer.

    Raises:
        EngineLoadError: no weight of the model can be pruned.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    layers = eligible_layers(out, exclude_nodes)
    if only is not None:
        layers = [layer if layer.node in only or not layer.pruned
                  else PrunedLayer(layer.node, layer.op_type, layer.weight, layer.shape, layer.axis, False,
                                   "not selected") for layer in layers]
    targets = {layer.weight: layer.axis for layer in layers if layer.pruned}
    if not targets:
        raise EngineLoadError("sparsity 2:4: no MatMul/Gemm/Conv weight can be pruned "
                              f"({'; '.join(f'{x.node}: {x.reason}' for x in layers) or 'none found'})")
    for i, tensor in enumerate(out.graph.initializer):
        axis = targets.get(tensor.name)
        if axis is not None:
            array = numpy_helper.to_array(tensor)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(prune_weight(array, axis), tensor.name))
    return out, layers


def _group(name: str, by: str) -> str:
    """A layer's group in the report: itself ("node"), its kind across blocks ("kind"), or its block ("block")."""
    import re

    if by == "kind":  # encoder.layer.3.attention.self.query.matmul_12 -> attention.self.query
        return re.sub(r"(^|\.)[a-z]+\.\d+\.|[._]?matmul_?\d*$|#\d+$", ".", name, flags=re.I).strip(".") or name
    if by == "block":  # encoder.layer.3.attention... -> encoder.layer.3
        match = re.match(r"(.*?\.\d+)\.", name)
        return match.group(1) if match else name
    return name


def _sensitivity(model_path: Path, calibration_dir: Path | None, by: str = "node") -> None:  # pragma: no cover
    import tempfile

    from .accuracy import measure_accuracy
    from .calibration import load_calibration
    from .precision import model_inputs, synthetic_feeds

    model = onnx.load(str(model_path))
    inputs = model_inputs(model)
    batching = bool(inputs) and all(dims and dims[0] < 0 for _, _, dims in inputs)
    feeds: list[Any]
    calibration = load_calibration(calibration_dir.parent, {n: d for n, d, _ in inputs}, batching, 4) \
        if calibration_dir is not None else None
    feeds = calibration.all_feeds() if calibration is not None else synthetic_feeds(inputs, batching)
    if not feeds:
        raise SystemExit("no calibration data and inputs that cannot be synthesised")
    layers = [layer for layer in eligible_layers(model) if layer.pruned]
    with tempfile.TemporaryDirectory() as tmp:
        groups: dict[str, list[str]] = {}
        for layer in layers:
            groups.setdefault(_group(layer.node, by), []).append(layer.node)
        rows: list[tuple[str, list[str] | None]] = [(f"all {len(layers)} layers", None)]
        rows += [(f"{label} ({len(nodes)})", nodes) for label, nodes in groups.items()]
        for label, only in rows:
            pruned, _ = prune_2_4(model, only=only)
            path = Path(tmp) / "pruned.onnx"
            onnx.save(pruned, str(path))
            report = measure_accuracy(model_path, path, feeds, batching, "calibration")
            print(f"{label:40s} {report.summary()}")


if __name__ == "__main__":  # pragma: no cover
    import argparse

    cli = argparse.ArgumentParser(prog="python -m tensorgate.engines.sparsity",
                                  description="accuracy of 2:4 pruning against fp32, layer by layer")
    cli.add_argument("model", type=Path)
    cli.add_argument("calibration", type=Path, nargs="?", help="<model>/calibration (else synthetic inputs)")
    cli.add_argument("--by", choices=("node", "kind", "block"), default="node",
                     help="prune one node, one kind of node in every block, or one block at a time")
    ns = cli.parse_args()
    _sensitivity(ns.model, ns.calibration, ns.by)

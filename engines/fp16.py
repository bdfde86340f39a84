"""FP16 conversion with fp32 inputs and outputs, working around onnxconverter-common's known bugs.

``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``
gives the graph TensorRT's strongly typed build and ONNX Runtime both want
(fp16 weights and compute, Cast at the fp32 edges), but it has two bugs
(seen in 1.16, tests/engines/test_fp16.py):

* a graph output that is also consumed inside the graph: the converter renames
  the producer's output and casts it back to fp32 under the output's name, so
  the inner consumers read the fp32 copy while the converter believes they read
  fp16 ("Type (tensor(float16)) ... does not match expected type
  (tensor(float))"). We give such outputs their own ``Identity`` first, so the
  inner consumers read the fp16 tensor and only the Identity is cast.
* ``Cast(to=FLOAT)`` nodes of the model stay fp32 casts, so fp32 tensors flow
  into fp16 nodes. We retarget the model's own float casts to FLOAT16 after the
  conversion (the converter's I/O casts are left alone).
"""

from __future__ import annotations

import fnmatch
import warnings

import onnx
from onnx import TensorProto, helper

from .base import EngineLoadError

__all__ = ["convert_fp16", "isolate_consumed_outputs"]

_INNER_SUFFIX = "__tensorgate_fp16_inner"


def isolate_consumed_outputs(model: onnx.ModelProto) -> list[str]:
    """Route every graph output that nodes also consume through its own Identity (in place).

    Args:
        model: the fp32 model.

    Returns:
        The outputs that were isolated.
    """
    graph = model.graph
    consumed = {name for node in graph.node for name in node.input}
    inputs = {i.name for i in graph.input}
    isolated = []
    for output in graph.output:
        name = output.name
        if name not in consumed or name in inputs:
            continue
        inner = name + _INNER_SUFFIX
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}_output_identity"))
        isolated.append(name)
    return isolated


def _name_nodes(model: onnx.ModelProto) -> None:
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def convert_fp16(
    model: onnx.ModelProto, keep_nodes: list[str] | None = None, keep_op_types: list[str] | None = None
) -> onnx.ModelProto:
    """Convert an fp32 model to fp16 compute with fp32 inputs and outputs.

    Args:
        model: the fp32 model (not modified).
        keep_nodes: node names (or fnmatch patterns) to keep in fp32.
        keep_op_types: op types to keep in fp32 (added to the converter's own block list).

    Returns:
        The fp16 model.

    Raises:
        EngineLoadError: the converter failed.
    """
    from onnxconverter_common import float16  # imported lazily: 2-3 s and only needed to build

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_nodes(work)
    isolate_consumed_outputs(work)
    float_casts = {
        n.name
        for n in work.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)
    }
    patterns = list(keep_nodes or ())
    blocked = {n.name for n in work.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in patterns)}
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_op_types or ()))
    try:
        with warnings.catch_warnings():  # one UserWarning per clipped constant: noise in a server log
            warnings.simplefilter("ignore", UserWarning)
            converted: onnx.ModelProto = float16.convert_float_to_float16(
            work, keep_io_types=True, op_block_list=op_block, node_block_list=sorted(blocked) or None
        )
    except Exception as exc:
        raise EngineLoadError(f"FP16 conversion failed: {type(exc).__name__}: {exc}") from exc
    for node in converted.graph.node:
        if node.name in float_casts and node.name not in blocked:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    # value_info from before the retargeting would now lie about those casts' outputs
    del converted.graph.value_info[:]
    return converted

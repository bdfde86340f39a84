"""Repositories for the ensemble, tokenizer and response cache tests (built with onnx.helper and tokenizers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support import write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb

T = pb.ModelInferRequest.InferInputTensor

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "is", "eating", "food", "bread", "piece", "of", "."]

# add/sub batching with a long queue delay, so concurrent requests from several ensembles merge
SIMPLE = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# (a, b) -> simple -> (a+b, a-b) -> simple -> (2a, 2b): two steps of one composing model
CHAIN = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "B" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "TWICE_A" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "TWICE_B" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [
    { model_name: "simple" model_version: -1
      input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "sum" } output_map { key: "OUTPUT1" value: "diff" } },
    { model_name: "simple" model_version: -1
      input_map { key: "INPUT0" value: "sum" } input_map { key: "INPUT1" value: "diff" }
      output_map { key: "OUTPUT0" value: "TWICE_A" } output_map { key: "OUTPUT1" value: "TWICE_B" } }
  ]
}
"""

TOKENIZER = """
backend: "tokenizer"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
         { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
parameters { key: "max_text_bytes" value: { string_value: "200" } }
parameters { key: "max_length" value: { string_value: "8" } }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# the same tokenizer refusing to truncate: a long text fails inside the step (INTERNAL, naming the step)
STRICT_TOKENIZER = TOKENIZER.replace(
    'parameters { key: "max_length"', 'parameters { key: "truncation" value: { string_value: "false" } }\n'
    'parameters { key: "max_length"')

# text -> token ids (a tokenizer step), ids -> ids + mask (an ONNX step): text in, tensors out
TEXT = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "IDS" data_type: TYPE_INT64 dims: [ -1 ] }, { name: "MASK" data_type: TYPE_INT64 dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "TOKENIZER_NAME"
      input_map { key: "text" value: "TEXT" }
      output_map { key: "input_ids" value: "IDS" } output_map { key: "attention_mask" value: "MASK" } }
  ]
}
"""


def write_word_tokenizer(path: Path) -> Path:
    """A small BERT-style word-level tokenizer.json ([CLS] words [SEP]); no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def write_tokenizer_model(repo: Path, name: str, config: str) -> None:
    write_word_tokenizer(repo / name / "1" / "tokenizer.json")
    (repo / name / "config.pbtxt").write_text(config)


def write_ensemble(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)  # Triton: an ensemble's version folder is empty
    (repo / name / "config.pbtxt").write_text(config)


def ensemble_repository(repo: Path) -> Path:
    write_model(repo, "simple", SIMPLE)
    write_ensemble(repo, "chain", CHAIN)
    write_tokenizer_model(repo, "tokenizer", TOKENIZER)
    write_tokenizer_model(repo, "strict_tokenizer", STRICT_TOKENIZER)
    write_ensemble(repo, "text", TEXT.replace("TOKENIZER_NAME", "tokenizer"))
    write_ensemble(repo, "strict_text", TEXT.replace("TOKENIZER_NAME", "strict_tokenizer"))
    # broken ensembles: each fails to load with its reason, the rest keep serving
    write_ensemble(repo, "missing_model", CHAIN.replace('model_name: "simple"', 'model_name: "nowhere"', 1))
    write_ensemble(repo, "bad_map", CHAIN.replace('key: "INPUT0" value: "A"', 'key: "WRONG" value: "A"'))
    write_ensemble(repo, "unwritten", CHAIN.replace('value: "TWICE_B"', 'value: "other"'))
    write_ensemble(repo, "cycle", CHAIN.replace('value: "A" }', 'value: "TWICE_A" }'))
    return repo


def chain_request(a: np.ndarray, b: np.ndarray, model: str = "chain", request_id: str = "") -> pb.ModelInferRequest:
    rows = a.shape[0]
    return pb.ModelInferRequest(
        model_name=model, id=request_id,
        inputs=[T(name="A", datatype="INT32", shape=[rows, 16]), T(name="B", datatype="INT32", shape=[rows, 16])],
        raw_input_contents=[a.astype(np.int32).tobytes(), b.astype(np.int32).tobytes()],
    )


def bytes_tensor(texts: list[bytes]) -> bytes:
    """BYTES wire encoding: a 4-byte little-endian length before each element."""
    return b"".join(len(t).to_bytes(4, "little") + t for t in texts)


def text_request(texts: list[bytes], model: str = "text", name: str = "TEXT") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model, inputs=[T(name=name, datatype="BYTES", shape=[len(texts), 1])],
        raw_input_contents=[bytes_tensor(texts)],
    )

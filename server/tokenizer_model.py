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

Parameters: ``padding`` (longest | max_length), ``max_length``, ``truncation``,
``add_special_tokens``, ``max_text_bytes``. Text is checked before it is
tokenized: ``TextGuard`` refuses a request whose BYTES payload is larger than
rows x ``max_text_bytes`` before decoding it, and any text over the cap or not
UTF-8 after, both as INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines.base import EngineLoadError
from tensorgate.engines.tokenizer_engine import TOKENIZER_BACKEND, TokenizerEngine, TokenizerOptions

from .engine_factory import LoadedEngine, LoadError
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .request import InferRequest

__all__ = ["TOKENIZER_BACKEND", "TOKENIZER_FILENAME", "TextGuard", "is_tokenizer", "load_tokenizer_engine"]

TOKENIZER_FILENAME = "tokenizer.json"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def is_tokenizer(config: mc.ModelConfig) -> bool:
    return config.backend == TOKENIZER_BACKEND


def _param(config: mc.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value.strip() if key in config.parameters else None


def _int(config: mc.ModelConfig, key: str, default: int) -> int:
    raw = _param(config, key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LoadError(f"parameter {key} must be an integer, got '{raw}'") from None


def _bool(config: mc.ModelConfig, key: str, default: bool) -> bool:
    raw = _param(config, key)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise LoadError(f"parameter {key} must be true or false, got '{raw}'")


def tokenizer_options(config: mc.ModelConfig) -> TokenizerOptions:
    """The tokenizer's settings from ``parameters`` and the config's tensor names."""
    defaults = TokenizerOptions()
    bytes_inputs = [t.name for t in config.input if t.data_type == mc.TYPE_STRING]
    int_outputs = [t.name for t in config.output]
    if len(config.input) > 1 or (config.input and not bytes_inputs):
        raise LoadError("a tokenizer model has exactly one input, of data_type TYPE_STRING")
    if config.output and len(int_outputs) != 2:
        raise LoadError("a tokenizer model has two outputs: token ids, then the attention mask")
    try:
        return TokenizerOptions(
            input_name=bytes_inputs[0] if bytes_inputs else defaults.input_name,
            ids_name=int_outputs[0] if int_outputs else defaults.ids_name,
            mask_name=int_outputs[1] if int_outputs else defaults.mask_name,
            padding=_param(config, "padding") or defaults.padding,
            max_length=_int(config, "max_length", defaults.max_length),
            truncation=_bool(config, "truncation", defaults.truncation),
            add_special_tokens=_bool(config, "add_special_tokens", defaults.add_special_tokens),
            max_text_bytes=_int(config, "max_text_bytes", defaults.max_text_bytes),
        )
    except EngineLoadError as exc:
        raise LoadError(str(exc)) from exc


def find_tokenizer_file(version_dir: Path) -> Path:
    for candidate in (version_dir / TOKENIZER_FILENAME, version_dir.parent / TOKENIZER_FILENAME):
        if candidate.is_file():
            return candidate
    raise LoadError(f"a tokenizer model needs {TOKENIZER_FILENAME} in its version folder or its model folder")


def load_tokenizer_engine(version_dir: Path, config: mc.ModelConfig) -> tuple[LoadedEngine, TextGuard]:
    """The engine and the request guard for one tokenizer model version."""
    options = tokenizer_options(config)
    engine = TokenizerEngine(find_tokenizer_file(version_dir), options)
    description = (f"tokenizer, padding {options.padding}, max_length {options.max_length}, "
                   f"truncation {'on' if options.truncation else 'off'}")
    guard = TextGuard({options.input_name: options.max_text_bytes})
    return LoadedEngine(engine, description=description, precision="n/a"), guard


class TextGuard:
    """Caps the text a request may carry, per BYTES input name, before and after decoding.

    Args:
        limits: input name -> the longest UTF-8 text (bytes) accepted in one element.
    """

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)

    def merged(self, other: TextGuard | None) -> TextGuard:
        if other is None:
            return self
        limits = dict(self.limits)
        for name, cap in other.limits.items():
            limits[name] = min(cap, limits.get(name, cap))
        return TextGuard(limits)

    def before(self, model: str, request: pb.ModelInferRequest) -> None:
        """Refuse an oversized BYTES payload before it is decoded (each element: 4-byte length + text)."""
        raw = request.raw_input_contents
        index = 0
        for tensor in request.inputs:
            cap = self.limits.get(tensor.name)
            has_raw = not tensor.HasField("contents")
            if cap is not None:
                elements = int(np.prod(tensor.shape)) if len(tensor.shape) else 1
                if has_raw and index < len(raw):
                    size = len(raw[index])
                else:
                    size = sum(len(b) + 4 for b in tensor.contents.bytes_contents)
                if elements < 0 or size > max(elements, 0) * (cap + 4):
                    raise InvalidArgumentError(
                        f"model '{model}': input '{tensor.name}' carries {size} bytes for {elements} text(s); "
                        f"each text may have at most {cap} bytes (parameter max_text_bytes)"
                    )
            if has_raw:
                index += 1

    def after(self, model: str, inputs: dict[str, Any]) -> None:
        """Each decoded text: within the cap, and UTF-8."""
        for name, cap in self.limits.items():
            array = inputs.get(name)
            if array is None:
                continue
            for index, value in enumerate(_flat(array)):
                data = value if isinstance(value, bytes) else str(value).encode("utf-8")
                if len(data) > cap:
                    raise InvalidArgumentError(
                        f"model '{model}': input '{name}' element {index} has {len(data)} bytes; "
                        f"the most a text may have is {cap} (parameter max_text_bytes)"
                    )
                if isinstance(value, bytes):
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InvalidArgumentError(
                            f"model '{model}': input '{name}' element {index} is not valid UTF-8 text"
                        ) from None

    def check(self, request: InferRequest) -> None:
        self.after(request.model.name, request.inputs)


def _flat(array: Any) -> Iterable[Any]:
    return array.reshape(-1) if hasattr(array, "reshape") else [array]

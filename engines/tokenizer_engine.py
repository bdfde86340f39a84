"""The tokenizer engine: BYTES text in, ``input_ids``/``attention_mask`` (INT64) out.

A built-in model kind (config ``backend: "tokenizer"``) so that an ensemble can
take text from the wire and hand token ids to a transformer in process. It runs
a Hugging Face ``tokenizers`` ``tokenizer.json`` (Rust; ``encode_batch``
releases the GIL), with padding and truncation from the model's parameters
(``TokenizerOptions``). Every row of a batch is padded to the same length, so a
batch's outputs are one rectangular tensor that the scheduler splits back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Arrays, EngineLoadError, EngineRunError, TensorSpec

__all__ = ["TOKENIZER_BACKEND", "TokenizerEngine", "TokenizerOptions"]

TOKENIZER_BACKEND = "tokenizer"
_PADDINGS = ("longest", "max_length")


@dataclass(frozen=True)
class TokenizerOptions:
    """How text becomes token ids.

    Args:
        input_name: the BYTES input holding one UTF-8 text per row.
        ids_name / mask_name: the INT64 outputs.
        padding: "longest" (pad a batch to its longest row) or "max_length" (always ``max_length``).
        max_length: the most tokens a row keeps (truncation), special tokens included.
        truncation: cut longer texts to ``max_length``; when off, a longer text fails the request.
        add_special_tokens: add [CLS]/[SEP] (or the tokenizer's own) as the model was trained with.
        max_text_bytes: the longest UTF-8 text accepted, checked before tokenizing.
    """

    input_name: str = "text"
    ids_name: str = "input_ids"
    mask_name: str = "attention_mask"
    padding: str = "longest"
    max_length: int = 256
    truncation: bool = True
    add_special_tokens: bool = True
    max_text_bytes: int = 16384

    def __post_init__(self) -> None:
        if self.padding not in _PADDINGS:
            raise EngineLoadError(f"tokenizer padding must be one of {list(_PADDINGS)}, got '{self.padding}'")
        if not 1 <= self.max_length <= 1_000_000:
            raise EngineLoadError(f"tokenizer max_length must be between 1 and 1000000, got {self.max_length}")
        if not 1 <= self.max_text_bytes <= 64 * 2**20:
            raise EngineLoadError(f"tokenizer max_text_bytes must be between 1 and 64 MiB, got {self.max_text_bytes}")


def _load(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception on a bad file
        raise EngineLoadError(f"cannot read tokenizer file {path.name}: {exc}") from exc


class _TokenizerInstance:
    """One tokenizer copy; ``tokenizers`` objects are not shared between threads."""

    def __init__(self, path: Path, options: TokenizerOptions) -> None:
        self._options = options
        self._tokenizer = _load(path)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        if options.truncation:
            self._tokenizer.enable_truncation(max_length=options.max_length)

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        o = self._options
        text = inputs[o.input_name]
        rows = text.shape[0] if text.ndim else 1
        try:
            texts = [_as_str(v) for v in text.reshape(-1)]
        except UnicodeDecodeError as exc:
            raise EngineRunError(f"input '{o.input_name}' is not UTF-8: {exc.reason}") from None
        if len(texts) != rows:
            raise EngineRunError(f"input '{o.input_name}' must hold one text per row, got shape {list(text.shape)}")
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=o.add_special_tokens)
        longest = max((len(e.ids) for e in encodings), default=0)
        if longest > o.max_length:  # only without truncation
            raise EngineRunError(f"a text has {longest} tokens, more than max_length {o.max_length}")
        width = o.max_length if o.padding == "max_length" else max(longest, 1)
        pad_id = _pad_id(self._tokenizer)
        ids = np.full((rows, width), pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = enc.attention_mask
        out = {o.ids_name: ids, o.mask_name: mask}
        return {name: out[name] for name in output_names}

    def close(self) -> None:
        self._tokenizer = None


def _as_str(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8")
    return str(value)


def _pad_id(tokenizer: Any) -> int:
    padding = getattr(tokenizer, "padding", None)
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    token_id = tokenizer.token_to_id("[PAD]")
    return int(token_id) if token_id is not None else 0


class TokenizerEngine:
    """A tokenizer.json served as a model: text rows in, padded token ids out."""

    kind = TOKENIZER_BACKEND

    def __init__(self, path: Path, options: TokenizerOptions | None = None) -> None:
        self.path = path
        self.options = options or TokenizerOptions()
        _load(path)  # fail the load now, not on the first request

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.options.input_name, "BYTES", (-1, 1))]

    @property
    def outputs(self) -> list[TensorSpec]:
        o = self.options
        return [TensorSpec(o.ids_name, "INT64", (-1, -1)), TensorSpec(o.mask_name, "INT64", (-1, -1))]

    def create_instance(self) -> _TokenizerInstance:
        return _TokenizerInstance(self.path, self.options)

    def close(self) -> None:
        pass

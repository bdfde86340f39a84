"""Text caps per BYTES input, checked before and after decoding (tokenizer models and the ensembles over them).

``TextGuard`` refuses a request whose BYTES payload is larger than rows x
``max_text_bytes`` before decoding it, and any text over the cap or not UTF-8
after, both as INVALID_ARGUMENT. A leaf module: the model version holds a guard,
the data plane and ensembles apply it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .errors import InvalidArgumentError

__all__ = ["TextGuard"]


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


def _flat(array: Any) -> Iterable[Any]:
    return array.reshape(-1) if hasattr(array, "reshape") else [array]

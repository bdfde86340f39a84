"""The Engine interface every backend implements (ONNX Runtime, TensorRT).

An ``Engine`` is a loaded model: it knows its tensors and makes instances. An
``EngineInstance`` runs batches, one at a time, in the thread that calls it;
the server gives each instance its own worker thread so instances overlap.
Inputs and outputs are numpy arrays whose first axis is the batch when the
model batches. Nothing here knows about gRPC or asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy.typing as npt

Arrays = Mapping[str, npt.NDArray[Any]]


class EngineError(Exception):
    """Base of every engine failure."""


class EngineLoadError(EngineError):
    """A model file or its options could not be turned into an engine."""


class EngineRunError(EngineError):
    """An engine failed while running a batch."""


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor as the engine sees it.

    Args:
        name: tensor name in the model file.
        datatype: v2 datatype string ("FP32", "INT64", "BYTES", ...).
        shape: full shape including any batch axis; -1 marks a variable dim.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]


@runtime_checkable
class EngineInstance(Protocol):
    """One execution context: runs one batch at a time in the caller's thread."""

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Run one batch.

        Args:
            inputs: every model input by name.
            output_names: the outputs to compute.

        Returns:
            The requested outputs by name.

        Raises:
            EngineRunError: the engine failed; the batch's requests fail, the instance stays usable.
        """
        ...

    def close(self) -> None:
        """Release the instance's sessions, streams and buffers."""
        ...


@runtime_checkable
class Engine(Protocol):
    """A loaded model that creates instances."""

    kind: str  # "onnxruntime", "tensorrt"

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def create_instance(self) -> EngineInstance:
        """Make one more instance (its own session/context)."""
        ...

    def close(self) -> None: ...

"""A tensor as the wire sees it, made once per model version from its effective config (a leaf module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tensorgate.clients.codec import config_dtype_to_datatype, datatype_to_numpy, element_size
from tensorgate.clients.pb import model_config_pb2 as mc

__all__ = ["TensorInfo", "tensor_info"]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the wire sees it: dims exclude the batch axis when the model batches."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    np_dtype: np.dtype[Any]
    element_size: int  # 0 for BYTES
    reshape: tuple[int, ...] | None  # the engine's dims when config.pbtxt reshapes
    optional: bool = False

    def wire_shape(self, batching: bool) -> list[int]:
        return [-1, *self.dims] if batching else list(self.dims)


def tensor_info(entry: mc.ModelInput | mc.ModelOutput) -> TensorInfo:
    datatype = config_dtype_to_datatype(entry.data_type)
    return TensorInfo(
        name=entry.name,
        datatype=datatype,
        dims=tuple(entry.dims),
        np_dtype=datatype_to_numpy(datatype),
        element_size=element_size(datatype),
        reshape=tuple(entry.reshape.shape) if entry.HasField("reshape") else None,
        optional=bool(getattr(entry, "optional", False)),
    )

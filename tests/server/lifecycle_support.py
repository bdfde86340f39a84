"""Helpers for the model-lifecycle tests: a repository of add/sub models and one-line inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support import write_model
from tensorgate.clients import InferenceClient, InferInput, InferResult

ADD_SUB_CONFIG = """
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def add_sub_repository(root: Path, *names: str) -> Path:
    for name in names or ("simple",):
        write_model(root, name, ADD_SUB_CONFIG)
    return root


def infer_add_sub(client: InferenceClient, model: str = "simple", version: str = "") -> InferResult:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(a),
              InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(np.ones_like(a))]
    result = client.infer(model, inputs, model_version=version)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
    return result


def index_rows(client: InferenceClient) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (state, reason) from RepositoryIndex."""
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}

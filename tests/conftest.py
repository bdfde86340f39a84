"""Shared fixtures: a test model repository and a real server on a loopback port."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The packages import only as tensorgate.*: take the checkout's root off sys.path (`python -m pytest` puts it
# there), so a stray top-level `import server` fails here as it would for a user instead of loading a second
# copy of the code that a monkeypatch or an isinstance check would silently miss.
_ROOT = str(Path(__file__).resolve().parents[1])
sys.path[:] = [p for p in sys.path if p not in ("", ".", _ROOT) and os.path.abspath(p) != _ROOT]

from support import RunningServer, write_model  # noqa: E402

SIMPLE_CONFIG = """
name: "simple"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple (add/sub int32, batching), nobatch (fp32 add/sub, max_batch_size 0), autocomplete (no config),
    mlp (784->64->10 fp32), broken (not ONNX)."""
    repo = tmp_path_factory.mktemp("repository")
    write_model(repo, "simple", SIMPLE_CONFIG)
    write_model(repo, "nobatch", 'name: "nobatch"\nmax_batch_size: 0\n', dtype=__import__("numpy").float32)
    write_model(repo, "autocomplete", None)
    write_model(repo, "mlp", 'max_batch_size: 16\ndynamic_batching { }\n', builder="mlp", sizes=(784, 64, 10))
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    return repo


@pytest.fixture(scope="session")
def server(test_repository: Path) -> Iterator[RunningServer]:
    handle = RunningServer(test_repository).start()
    yield handle
    handle.stop()

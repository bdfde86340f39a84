"""Model execution with no gRPC in it: numpy in, numpy out.

Exception tree::

    EngineError
    ├── EngineLoadError   (a model file or option cannot be turned into an engine)
    └── EngineRunError    (an engine failed while running a batch)
"""

from __future__ import annotations

from .base import Engine, EngineError, EngineInstance, EngineLoadError, EngineRunError, TensorSpec

__all__ = ["Engine", "EngineError", "EngineInstance", "EngineLoadError", "EngineRunError", "TensorSpec"]

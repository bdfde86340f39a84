"""Model execution with no gRPC in it: numpy in, numpy out.

Exception tree::

    EngineError
    ├── EngineLoadError        (a model file or option cannot be turned into an engine)
    │   ├── CalibrationError   (calibration data missing, or not matching the model's inputs)
    │   └── AccuracyGateError  (a FP16/INT8 artifact is further from fp32 than the thresholds allow)
    ├── EngineRunError         (an engine failed while running a batch)
    └── CudaError              (a CUDA runtime call failed; engines.tensorrt.cuda)
"""

from __future__ import annotations

from .accuracy import AccuracyGateError
from .base import Engine, EngineError, EngineInstance, EngineLoadError, EngineRunError, TensorSpec
from .calibration import CalibrationError

__all__ = [
    "AccuracyGateError",
    "CalibrationError",
    "Engine",
    "EngineError",
    "EngineInstance",
    "EngineLoadError",
    "EngineRunError",
    "TensorSpec",
]

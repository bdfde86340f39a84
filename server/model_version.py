"""One model version as the server sees it: state, plan, effective config, tensor specs, scheduler.

Near the leaves of the server's import graph: the loader (model.py), the
registry, the request path and telemetry all use ``ModelVersion``, and it
imports none of them. Its scheduler is any ``ModelScheduler`` (request.py): the
dynamic batcher, an ensemble's scheduler, or a proxy for one in another
process; requests see it as a ``ServedModel`` (request.py), so the request
module needs nothing from here.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import Engine
from tensorgate.engines.accuracy import AccuracyReport

from .errors import LoadError
from .plan import ModelPlan
from .telemetry.log_fields import model_state
from .tensor_info import TensorInfo, tensor_info
from .text_guard import TextGuard

if TYPE_CHECKING:
    from .request import ModelScheduler

# TensorInfo (tensor_info.py) is importable from here too
__all__ = ["ModelState", "ModelVersion", "TensorInfo", "set_tensors"]

log = logging.getLogger("tensorgate.model")


class ModelState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


def _read_labels(model_dir: Path, output: mc.ModelOutput) -> list[str] | None:
    if not output.label_filename:
        return None
    path = model_dir / output.label_filename
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LoadError(f"output '{output.name}': cannot read label file {output.label_filename}: {exc}") from exc


class ModelVersion:
    """A model version the server can run; immutable once READY."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.path = path
        self.state = ModelState.LOADING
        self.reason = ""
        self.config = mc.ModelConfig(name=name)
        self.plan: ModelPlan | None = None  # what the server acts on, read once from the config (plan.py)
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        self.labels: dict[str, list[str]] = {}
        # per input: (expected rank, ((axis, fixed dim), ...)) precomputed for the request hot path
        self.shape_checks: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}
        self.max_batch_size = 0
        self.engine: Engine | None = None
        self.scheduler: ModelScheduler | None = None
        self.warmup_runs = 0  # warm-up executions made before READY
        self.cache_hit = False  # the engine came from the engine cache (tensorgate build reports it)
        self.engine_kind = ""
        self.precision = "FP32"  # the precision artifact's label (traces show it)
        self.accuracy: AccuracyReport | None = None  # the precision artifact's figures vs fp32
        self.response_cache = False  # response_cache { enable: true }: the server's cache answers repeats
        self.input_guard: TextGuard | None = None  # text caps checked before decoding (tokenizer, ensembles)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def fail(self, reason: str) -> None:
        self.state = ModelState.UNAVAILABLE
        self.reason = reason

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drain the scheduler (queued requests finish, up to `timeout`) and release the engine."""
        if self.state is ModelState.READY:
            self.state = ModelState.UNLOADING
        if self.scheduler is not None:
            self.scheduler.stop(timeout)  # kept: a late submit gets its clean "unloading" answer
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.state is ModelState.UNLOADING:
            self.state = ModelState.UNAVAILABLE
            self.reason = "unloaded"
            log.info("model %s version %d UNAVAILABLE: unloaded", self.name, self.version,
                     extra=model_state(self.name, self.version, "UNAVAILABLE", "unloaded"))


def set_tensors(mv: ModelVersion, config: mc.ModelConfig) -> None:
    """The effective config and what the request path reads from it, precomputed."""
    mv.config = config
    mv.max_batch_size = config.max_batch_size
    mv.response_cache = config.response_cache.enable
    mv.inputs = {t.name: tensor_info(t) for t in config.input}
    offset = 1 if mv.batching else 0
    mv.shape_checks = {
        name: (len(t.dims) + offset, tuple((i + offset, d) for i, d in enumerate(t.dims) if d != -1))
        for name, t in mv.inputs.items()
    }
    mv.outputs = {t.name: tensor_info(t) for t in config.output}
    for output in config.output:
        labels = _read_labels(mv.path, output)
        if labels is not None:
            mv.labels[output.name] = labels

"""One loaded model version: effective config, tensor specs, engine, instances, scheduler.

This is the seam between engines and the server: engine errors are translated
here (``raise ServerError(...) from exc``), nowhere else.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tensorgate.clients.codec import config_dtype_to_datatype, datatype_to_numpy, element_size
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import Engine, EngineError, EngineInstance, EngineLoadError
from tensorgate.engines.accuracy import AccuracyReport

from .autocomplete import ConfigError, complete_config
from .engine_factory import EngineSettings, LoadError, Progress, create_engine
from .repository import DEFAULT_MODEL_FILENAME
from .scheduler import Scheduler
from .telemetry.drift import drift_monitor
from .telemetry.logs import model_state
from .tokenizer_model import TextGuard, is_tokenizer, load_tokenizer_engine
from .warmup import run_warmup

if TYPE_CHECKING:
    from .ensemble import EnsembleScheduler

__all__ = ["LoadError", "ModelState", "ModelVersion", "TensorInfo", "load_model_version", "set_tensors"]

log = logging.getLogger("tensorgate.model")


class ModelState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


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


def _tensor_info(entry: mc.ModelInput | mc.ModelOutput) -> TensorInfo:
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
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        self.labels: dict[str, list[str]] = {}
        # per input: (expected rank, ((axis, fixed dim), ...)) precomputed for the request hot path
        self.shape_checks: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}
        self.max_batch_size = 0
        self.engine: Engine | None = None
        self.scheduler: Scheduler | EnsembleScheduler | None = None
        self.warmup_runs = 0  # warm-up executions made before READY
        self.cache_hit = False  # the engine came from the engine cache (tensorgate build reports it)
        self.engine_kind = ""
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


def load_model_version(
    name: str,
    version: int,
    model_file: Path,
    given: mc.ModelConfig,
    *,
    max_batch_size_given: bool,
    engine_settings: EngineSettings | None = None,
    progress: Progress | None = None,
) -> ModelVersion:
    """Load one version: engine, effective config, instances, warm-up, scheduler. Never raises."""
    mv = ModelVersion(name, version, model_file.parent.parent)
    log.info("model %s version %d LOADING", name, version, extra=model_state(name, version, "LOADING"))
    instances: list[EngineInstance] = []
    try:
        if is_tokenizer(given):  # the built-in tokenizer kind: tokenizer.json instead of a model file
            loaded, mv.input_guard = load_tokenizer_engine(model_file.parent, given)
        elif not model_file.is_file():
            raise LoadError(f"version {version} has no model file {model_file.name}")
        else:
            loaded = create_engine(name, version, model_file, given, engine_settings or EngineSettings(), progress)
        engine = loaded.engine
        mv.engine = engine
        mv.cache_hit = loaded.cache_hit
        mv.engine_kind = engine.kind
        mv.accuracy = loaded.accuracy
        config = complete_config(
            given,
            engine.inputs,
            engine.outputs,
            max_batch_size_given=max_batch_size_given,
            default_model_filename=given.default_model_filename or DEFAULT_MODEL_FILENAME,
            gpu_count=loaded.gpu_count,
        )
        for key, value in loaded.parameters.items():  # precision and accuracy figures, shown by ModelConfig
            config.parameters[key].string_value = value
        set_tensors(mv, config)
        count = loaded.instance_count or _instance_count(config)  # GPU engines: count per listed GPU
        instances = [engine.create_instance() for _ in range(count)]
        if config.model_warmup:
            if progress is not None:
                progress("warm-up")
            mv.warmup_runs = run_warmup(mv, instances)  # before READY: its failure fails the load
        mv.scheduler = Scheduler(mv, instances)
        mv.scheduler.drift = drift_monitor(mv, instances[0] if instances else None)  # opt-in per model
        mv.scheduler.start()
        mv.state = ModelState.READY
        log.info(
            "model %s version %d READY: %d instance(s) on %s, max_batch_size %d%s",
            name,
            version,
            len(instances),
            engine.kind,
            mv.max_batch_size,
            f" ({loaded.description})" if loaded.description else "",
            extra=model_state(name, version, "READY"),
        )
    except (LoadError, ConfigError, EngineLoadError) as exc:
        mv.fail(str(exc))
        log.error("model %s version %d UNAVAILABLE: %s", name, version, exc,
                  extra=model_state(name, version, "UNAVAILABLE", mv.reason))
    except EngineError as exc:
        mv.fail(f"engine error: {exc}")
        log.error("model %s version %d UNAVAILABLE: %s", name, version, exc,
                  extra=model_state(name, version, "UNAVAILABLE", mv.reason))
    except Exception as exc:  # a broken model must never take the server down
        mv.fail(f"failed to load: {type(exc).__name__}: {exc}")
        log.exception("model %s version %d UNAVAILABLE", name, version,
                      extra=model_state(name, version, "UNAVAILABLE", mv.reason))
    if not mv.ready:
        _release(mv, instances)
    return mv


def _release(mv: ModelVersion, instances: list[EngineInstance]) -> None:
    """A failed load gives back what it built (instances, engine) at once, not at garbage collection."""
    if mv.scheduler is not None:
        mv.scheduler.stop(0)
        mv.scheduler = None
    else:
        for instance in instances:
            try:
                instance.close()
            except Exception:  # best effort: the load already failed with its reason
                log.debug("closing an instance of %s failed", mv.name, exc_info=True)
    if mv.engine is not None:
        try:
            mv.engine.close()
        except Exception:
            log.debug("closing the engine of %s failed", mv.name, exc_info=True)
        mv.engine = None


def set_tensors(mv: ModelVersion, config: mc.ModelConfig) -> None:
    """The effective config and what the request path reads from it, precomputed."""
    mv.config = config
    mv.max_batch_size = config.max_batch_size
    mv.response_cache = config.response_cache.enable
    mv.inputs = {t.name: _tensor_info(t) for t in config.input}
    offset = 1 if mv.batching else 0
    mv.shape_checks = {
        name: (len(t.dims) + offset, tuple((i + offset, d) for i, d in enumerate(t.dims) if d != -1))
        for name, t in mv.inputs.items()
    }
    mv.outputs = {t.name: _tensor_info(t) for t in config.output}
    for output in config.output:
        labels = _read_labels(mv.path, output)
        if labels is not None:
            mv.labels[output.name] = labels


def _instance_count(config: mc.ModelConfig) -> int:
    return sum(max(1, g.count) for g in config.instance_group) or 1

"""Loading one model version: plan, engine, effective config, instances, warm-up, scheduler.

This is the seam between engines and the server: engine errors are translated
here (``raise ServerError(...) from exc``), nowhere else. The config is read
once into the version's plan (plan.py) before any engine is built; the
scheduler, the engine factory and the drift monitor take that plan. Nothing
below the registry imports this module (the version itself is model_version.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import EngineError, EngineInstance, EngineLoadError

from .autocomplete import ConfigError, complete_config
from .engine_factory import EngineSettings, Progress, create_engine
from .errors import LoadError
from .model_version import ModelState, ModelVersion, TensorInfo, set_tensors
from .plan import read_plan
from .repository import DEFAULT_MODEL_FILENAME
from .scheduler import Scheduler
from .telemetry.drift import DriftMonitor, drift_monitor, set_reference
from .telemetry.log_fields import model_state
from .tokenizer_model import load_tokenizer_engine
from .warmup import run_warmup

# ModelState, ModelVersion, TensorInfo and set_tensors live in model_version.py; importable here as before
__all__ = ["LoadError", "ModelState", "ModelVersion", "TensorInfo", "load_model_version", "set_tensors"]

log = logging.getLogger("tensorgate.model")


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
        plan = read_plan(given, version)  # every parameter checked before an engine is built
        if plan.tokenizer is not None:  # the built-in tokenizer kind: tokenizer.json instead of a model file
            loaded, mv.input_guard = load_tokenizer_engine(model_file.parent, plan.tokenizer)
        elif not model_file.is_file():
            raise LoadError(f"version {version} has no model file {model_file.name}")
        else:
            loaded = create_engine(name, version, model_file, plan, engine_settings or EngineSettings(), progress)
        engine = loaded.engine
        mv.engine = engine
        mv.cache_hit = loaded.cache_hit
        mv.engine_kind = engine.kind
        mv.accuracy = loaded.accuracy
        mv.precision = loaded.parameters.get("precision_artifact", "FP32")
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
        mv.plan = plan = plan.completed(config, loaded.placement)
        count = loaded.instance_count or plan.instances.count  # GPU engines: count per listed GPU
        instances = [engine.create_instance() for _ in range(count)]
        if config.model_warmup:
            if progress is not None:
                progress("warm-up")
            mv.warmup_runs = run_warmup(mv, instances)  # before READY: its failure fails the load
        scheduler = Scheduler(plan, instances)
        scheduler.drift = _drift_monitor(mv, instances[0] if instances else None)  # opt-in per model
        mv.scheduler = scheduler
        scheduler.start()
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


def _drift_monitor(mv: ModelVersion, instance: EngineInstance | None) -> DriftMonitor | None:
    """The output drift monitor the plan asks for (None: none), with its reference from the calibration data."""
    plan = mv.plan.drift if mv.plan is not None else None
    if plan is None:
        return None
    monitor = drift_monitor(plan, mv.name, mv.version_str, {n: t.dims for n, t in mv.outputs.items()}, mv.labels,
                            mv.batching)
    if instance is not None:
        set_reference(monitor, instance, mv.path, {n: t.np_dtype for n, t in mv.inputs.items()}, mv.max_batch_size)
    return monitor

"""Which engine runs a model version, and with what options: the one place that decides.

Today: ONNX Runtime on the CPU, with Triton's ORT backend keys from the
config's ``parameters`` (intra_op_thread_count, inter_op_thread_count) and
defaults that split the host's cores among the model's instances. Precision
artifacts, the engine cache and TensorRT plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clients.pb import model_config_pb2 as mc
from engines import Engine
from engines.onnxruntime_engine import OnnxRuntimeEngine, OrtOptions, default_intra_op_threads

from .autocomplete import DEFAULT_CPU_INSTANCES

__all__ = ["EngineSettings", "LoadError", "LoadedEngine", "create_engine"]


class LoadError(Exception):
    """A model version could not be loaded; the message is its UNAVAILABLE reason."""


@dataclass(frozen=True)
class EngineSettings:
    """Server-wide engine settings.

    Args:
        engine_cache_dir: where precision artifacts and built engines are cached (None: no cache).
    """

    engine_cache_dir: Path | None = None


@dataclass
class LoadedEngine:
    engine: Engine
    gpu_count: int = 0  # GPUs visible to the config completion (KIND_AUTO / KIND_GPU)
    description: str = ""  # e.g. "1 intra-op thread each"; logged when the model is READY


def _int_parameter(config: mc.ModelConfig, key: str, default: int) -> int:
    if key not in config.parameters:
        return default
    raw = config.parameters[key].string_value
    try:
        return int(raw)
    except ValueError:
        raise LoadError(f"parameter {key} must be an integer, got '{raw}'") from None


def instance_count(config: mc.ModelConfig) -> int:
    """Instances the config asks for (before completion: no groups = the default CPU group)."""
    if not config.instance_group:
        return DEFAULT_CPU_INSTANCES
    return sum(g.count if g.count > 0 else DEFAULT_CPU_INSTANCES for g in config.instance_group)


def ort_options(config: mc.ModelConfig) -> OrtOptions:
    """Triton's ORT backend keys in `parameters`, with defaults that fit the host."""
    intra = _int_parameter(config, "intra_op_thread_count", 0) or default_intra_op_threads(instance_count(config))
    inter = _int_parameter(config, "inter_op_thread_count", 0) or 1
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    spinning = config.parameters["allow_spinning"].string_value if "allow_spinning" in config.parameters else ""
    return OrtOptions(
        intra_op_threads=intra,
        inter_op_threads=inter,
        graph_level=level,
        allow_spinning=spinning.lower() in ("1", "true", "yes"),
    )


def create_engine(
    name: str, version: int, model_file: Path, config: mc.ModelConfig, settings: EngineSettings
) -> LoadedEngine:
    """Build the engine for one model version from its (not yet completed) config."""
    options = ort_options(config)
    engine = OnnxRuntimeEngine(model_file, options)
    threads = options.intra_op_threads
    return LoadedEngine(engine, description=f"{threads} intra-op thread{'s' if threads != 1 else ''} each")

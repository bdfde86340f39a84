"""Complete a model's config from the model itself, as Triton does without --strict-model-config.

What config.pbtxt leaves out is filled from the engine's tensors: inputs,
outputs, their datatypes and dims, max_batch_size (4 when the model can
batch), platform and backend, one KIND_CPU instance group of 2 (the ORT
backend's default), version policy latest(1), and ``dynamic_batching {}`` for
a batching model without a scheduler. What it does say is checked against the
model; a mismatch is a ``ConfigError`` whose message becomes the model's
UNAVAILABLE reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from tensorgate.clients.codec import CodecError, config_dtype_to_datatype, datatype_to_config_dtype
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import TensorSpec

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "ConfigError", "complete_config", "model_can_batch"]

DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size
DEFAULT_CPU_INSTANCES = 2  # Triton's ORT backend: KIND_CPU without a count
SUPPORTED_PLATFORMS = {"onnxruntime_onnx"}
SUPPORTED_BACKENDS = {"onnxruntime", "tokenizer"}  # tokenizer: server/tokenizer_model.py


class ConfigError(ValueError):
    """The config cannot describe this model."""


def model_can_batch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Every tensor has a variable first dimension, so axis 0 can be the batch."""
    return all(len(t.shape) >= 1 and t.shape[0] == -1 for t in (*inputs, *outputs))


def _dims_compatible(config_dims: Sequence[int], model_dims: Sequence[int]) -> bool:
    return len(config_dims) == len(model_dims) and all(
        c == m or c == -1 or m == -1 for c, m in zip(config_dims, model_dims, strict=True)
    )


def _complete_tensors(
    kind: str,
    configured: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    model: Sequence[TensorSpec],
    batching: bool,
    add_missing: bool,
) -> list[tuple[str, int, list[int]]]:
    """Check configured tensors against the model; returns (name, data_type, dims) in config order."""
    by_name = {t.name: t for t in model}
    done: list[tuple[str, int, list[int]]] = []
    for entry in configured:
        spec = by_name.get(entry.name)
        if spec is None:
            raise ConfigError(
                f"{kind} '{entry.name}' in config.pbtxt is not in the model; the model has "
                f"{sorted(by_name)}"
            )
        model_dims = list(spec.shape[1:] if batching else spec.shape)
        data_type = int(entry.data_type)
        if data_type == mc.TYPE_INVALID:
            data_type = datatype_to_config_dtype(spec.datatype)
        elif config_dtype_to_datatype(data_type) != spec.datatype:
            raise ConfigError(
                f"{kind} '{entry.name}': config.pbtxt says {mc.DataType.Name(entry.data_type)}, "
                f"the model has {spec.datatype}"
            )
        dims = list(entry.dims) or model_dims
        checked = list(entry.reshape.shape) if entry.HasField("reshape") else dims
        if not entry.HasField("reshape") and not _dims_compatible(checked, model_dims):
            raise ConfigError(
                f"{kind} '{entry.name}': config.pbtxt dims {dims} do not match the model's "
                f"{model_dims}" + (" (batch dimension excluded)" if batching else "")
            )
        done.append((entry.name, data_type, dims))
    if add_missing:
        named = {name for name, _, _ in done}
        for spec in model:
            if spec.name not in named:
                dims = list(spec.shape[1:] if batching else spec.shape)
                done.append((spec.name, datatype_to_config_dtype(spec.datatype), dims))
    return done


def _complete_instance_groups(config: mc.ModelConfig, gpu_count: int) -> None:
    if not config.instance_group:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu_count else mc.ModelInstanceGroup.KIND_CPU
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and not gpu_count:
            raise ConfigError(f"instance group '{group.name}' asks for KIND_GPU but this host has no GPU")
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
        if group.count <= 0:
            group.count = DEFAULT_CPU_INSTANCES if group.kind == mc.ModelInstanceGroup.KIND_CPU else 1


def complete_config(
    given: mc.ModelConfig,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size_given: bool,
    default_model_filename: str,
    gpu_count: int = 0,
) -> mc.ModelConfig:
    """Return the effective config: `given` completed from and checked against the model."""
    config = mc.ModelConfig()
    config.CopyFrom(given)
    if config.platform and config.platform not in SUPPORTED_PLATFORMS:
        raise ConfigError(
            f"platform '{config.platform}' is not supported; tensorgate serves {sorted(SUPPORTED_PLATFORMS)}"
        )
    if config.backend and config.backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"backend '{config.backend}' is not supported; tensorgate runs {sorted(SUPPORTED_BACKENDS)}"
        )
    if config.backend == "tokenizer":  # the built-in tokenizer kind has no platform
        config.platform = ""
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
    if config.max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be >= 0, got {config.max_batch_size}")

    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "sequence_batching":
        raise ConfigError(f"{scheduling} is not supported yet; use dynamic_batching or none")
    if scheduling == "ensemble_scheduling":  # ensembles load through server/ensemble.py, never here
        raise ConfigError("ensemble_scheduling needs platform 'ensemble'")

    can_batch = model_can_batch(inputs, outputs)
    if not max_batch_size_given and config.max_batch_size == 0 and can_batch:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
    batching = config.max_batch_size > 0
    if batching and not can_batch:
        fixed = [t.name for t in (*inputs, *outputs) if not t.shape or t.shape[0] != -1]
        raise ConfigError(
            f"max_batch_size is {config.max_batch_size} but {fixed} have no variable first "
            "dimension to batch along; set max_batch_size: 0"
        )

    try:
        completed_inputs = _complete_tensors("input", config.input, inputs, batching, add_missing=True)
        completed_outputs = _complete_tensors(
            "output", config.output, outputs, batching, add_missing=not config.output
        )
    except CodecError as exc:
        raise ConfigError(str(exc)) from exc
    for field, completed in ((config.input, completed_inputs), (config.output, completed_outputs)):
        existing = {t.name: t for t in field}
        for name, data_type, dims in completed:
            tensor = existing.get(name) or field.add(name=name)
            tensor.data_type = data_type  # type: ignore[assignment]
            del tensor.dims[:]
            tensor.dims.extend(dims)

    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.default_model_filename:
        config.default_model_filename = default_model_filename
    if config.max_batch_size > 1 and scheduling is None:
        config.dynamic_batching.SetInParent()
    _complete_instance_groups(config, gpu_count)
    return config

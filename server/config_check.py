"""No config field silently ignored: every ModelConfig field tensorgate does not implement is a finding.

Each field of ``inference.ModelConfig`` (and of the sub-messages whose parts
differ: inputs, outputs, instance groups, optimization) is in exactly one of
three tables: implemented, a warning (the model runs, the field has no effect)
or an error (the model would answer differently from what the config
promises, so it must not load). A field in none of them (a newer proto) is a
warning, so nothing passes unseen. ``--strict-model-config`` turns warnings
into errors. ``tensorgate build`` and ``serve`` run the same check
(``repository.read_model_source``), so a config serve refuses fails build too.
The README lists the tables (section "Model control and rollout").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from tensorgate.clients.pb import model_config_pb2 as mc

__all__ = ["ERRORS", "IMPLEMENTED", "WARNINGS", "ConfigFindings", "check_config"]

# field path -> why (the reason is part of the message the operator sees)
IMPLEMENTED = frozenset({
    "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output", "optimization",
    "dynamic_batching", "instance_group", "default_model_filename", "parameters", "model_warmup",
    "input.name", "input.data_type", "input.dims", "input.reshape", "input.optional", "input.format",
    "output.name", "output.data_type", "output.dims", "output.reshape", "output.label_filename",
    "instance_group.name", "instance_group.kind", "instance_group.count", "instance_group.gpus",
    "optimization.graph", "optimization.execution_accelerators",
    "model_transaction_policy.decoupled=false", "response_cache.enable=false", "response_cache.enable=true",
    "ensemble_scheduling",
})
WARNINGS: dict[str, str] = {
    "runtime": "backends are not loaded from libraries; ONNX Runtime runs the model",
    "cc_model_filenames": "one model file per version is served (default_model_filename)",
    "metric_tags": "metrics carry the model and version labels only",
    "model_operations": "operation modes are not implemented",
    "model_metrics": "custom metric histograms are not implemented",
    "input.allow_ragged_batch": "requests with different shapes are never merged into one batch",
    "instance_group.rate_limiter": "there is no rate limiter: instances run whenever a batch is ready",
    "instance_group.profile": "TensorRT profiles come from trt_profile_*_shapes",
    "instance_group.passive": "every instance takes requests",
    "instance_group.host_policy": "host policies are not implemented",
    "instance_group.secondary_devices": "secondary devices are not used",
    "optimization.priority": "model priority is not implemented",
    "optimization.cuda": "CUDA graphs and busy-wait events are not implemented",
    "optimization.input_pinned_memory": "pinned memory is chosen by the engine",
    "optimization.output_pinned_memory": "pinned memory is chosen by the engine",
    "optimization.gather_kernel_buffer_threshold": "not implemented",
    "optimization.eager_batching": "not implemented",
}
ERRORS: dict[str, str] = {
    "sequence_batching": "the sequence batcher is not implemented (use dynamic_batching or none)",
    "model_transaction_policy.decoupled=true": "decoupled models are not implemented",
    "model_repository_agents": "repository agents (which change the model files) are not implemented",
    "batch_input": "batch inputs are not implemented: the model would get different inputs",
    "batch_output": "batch outputs are not implemented: the model would return different outputs",
    "input.is_shape_tensor": "shape tensors are not implemented",
    "input.is_non_linear_format_io": "non-linear I/O formats are not implemented",
    "output.is_shape_tensor": "shape tensors are not implemented",
    "output.is_non_linear_format_io": "non-linear I/O formats are not implemented",
}
# sub-messages whose own fields are classified one level down
_NESTED = ("input", "output", "instance_group", "optimization")
# fields classified by their value (a bool that is harmless when false)
_BY_VALUE = ("model_transaction_policy", "response_cache")


@dataclass
class ConfigFindings:
    """What a config asks for that tensorgate does not do."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _set_fields(message: Message) -> Iterable[str]:
    return (descriptor.name for descriptor, _ in message.ListFields())


def _classify(path: str, findings: ConfigFindings, where: str) -> None:
    if path in IMPLEMENTED:
        return
    label = f"{where or path}"
    if path in ERRORS:
        findings.errors.append(f"{label}: {ERRORS[path]}")
    elif path in WARNINGS:
        findings.warnings.append(f"{label}: {WARNINGS[path]}")
    else:
        findings.warnings.append(f"{label}: this field is not implemented and has no effect")


def _by_value(config: mc.ModelConfig, name: str, findings: ConfigFindings) -> None:
    if name == "model_transaction_policy":
        value = config.model_transaction_policy.decoupled
        _classify(f"{name}.decoupled={str(value).lower()}", findings, f"{name}.decoupled")
    else:
        value = config.response_cache.enable
        _classify(f"{name}.enable={str(value).lower()}", findings, f"{name}.enable")


def check_config(config: mc.ModelConfig, strict: bool = False) -> ConfigFindings:
    """Classify every field the config sets; strict: warnings become errors."""
    findings = ConfigFindings()
    for name in _set_fields(config):
        if name in _BY_VALUE:
            _by_value(config, name, findings)
            continue
        _classify(name, findings, name)
        if name not in _NESTED:
            continue
        value = getattr(config, name)
        items = list(value) if name in ("input", "output", "instance_group") else [value]
        for index, item in enumerate(items):
            label = getattr(item, "name", "") or str(index)
            for sub in _set_fields(item):
                where = f"{name}[{label}].{sub}" if name != "optimization" else f"{name}.{sub}"
                _classify(f"{name}.{sub}", findings, where)
    if strict and findings.warnings:
        findings.errors += [f"{w} (an error under --strict-model-config)" for w in findings.warnings]
        findings.warnings = []
    return findings

"""An ensemble's ``ensemble_scheduling``, read once into a checked plan (Triton's semantics).

Each step names a composing model (and optionally a version; -1 = the
server's choice), an ``input_map`` (the step model's input -> an ensemble
tensor) and an ``output_map`` (the step model's output -> an ensemble tensor).
Ensemble tensors are the ensemble's inputs and the steps' outputs; each is
written once, every step input must be an ensemble input or another step's
output, every ensemble output must come from a step, and the steps form no
cycle. The composing models must be loaded first (the registry loads ensembles
last); their inputs and outputs are checked against the maps here, so a bad
ensemble fails to load with the reason instead of failing every request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tensorgate.clients.codec import config_dtype_to_datatype
from tensorgate.clients.pb import model_config_pb2 as mc

from .errors import LoadError

__all__ = ["ENSEMBLE_PLATFORM", "EnsemblePlan", "EnsembleStep", "is_ensemble", "plan_ensemble"]

ENSEMBLE_PLATFORM = "ensemble"


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM or config.WhichOneof("scheduling_choice") == "ensemble_scheduling"


@dataclass(frozen=True)
class EnsembleStep:
    """One step: a composing model and how its tensors map onto the ensemble's."""

    index: int
    model_name: str
    model_version: str  # "" = the newest ready version
    input_map: tuple[tuple[str, str], ...]  # (step model input, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]  # (step model output, ensemble tensor)

    @property
    def label(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True)
class EnsemblePlan:
    name: str
    steps: tuple[EnsembleStep, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: ensemble tensor -> index of the step that writes it (ensemble inputs are absent)
    producer: dict[str, int]

    @property
    def composing(self) -> list[tuple[str, str]]:
        return [(s.model_name, s.model_version) for s in self.steps]


# (model name, version) -> {input name: datatype}, {output name: datatype}, batching; raises LoadError
ModelLookup = Callable[[str, str], tuple[dict[str, str], dict[str, str], int]]


def plan_ensemble(config: mc.ModelConfig, lookup: ModelLookup) -> EnsemblePlan:
    """Check an ensemble config against its composing models.

    Raises:
        LoadError: the reason the ensemble cannot serve.
    """
    if config.platform and config.platform != ENSEMBLE_PLATFORM:
        raise LoadError(f"ensemble_scheduling needs platform '{ENSEMBLE_PLATFORM}', got '{config.platform}'")
    if config.WhichOneof("scheduling_choice") != "ensemble_scheduling" or not config.ensemble_scheduling.step:
        raise LoadError("platform 'ensemble' needs ensemble_scheduling with at least one step")
    if not config.input or not config.output:
        raise LoadError("an ensemble's config must list its inputs and outputs")
    if config.instance_group or config.HasField("optimization"):
        raise LoadError("an ensemble has no instances or engine of its own: remove instance_group/optimization")
    types = {t.name: config_dtype_to_datatype(t.data_type) for t in config.input}
    types.update({t.name: config_dtype_to_datatype(t.data_type) for t in config.output})
    inputs = tuple(t.name for t in config.input)
    producer: dict[str, int] = {}
    steps: list[EnsembleStep] = []
    for index, step in enumerate(config.ensemble_scheduling.step):
        label = f"step {index} (model '{step.model_name}')"
        if not step.model_name:
            raise LoadError(f"step {index} names no model")
        if step.model_name == config.name:
            raise LoadError(f"{label}: an ensemble cannot contain itself")
        version = "" if step.model_version <= 0 else str(step.model_version)
        model_inputs, model_outputs, batch = lookup(step.model_name, version)
        if config.max_batch_size > 0 and 0 < batch < config.max_batch_size:
            raise LoadError(f"{label}: its max_batch_size {batch} is below the ensemble's {config.max_batch_size}")
        if (config.max_batch_size > 0) != (batch > 0):
            raise LoadError(f"{label}: the ensemble and its composing models must all batch or all not batch")
        for key in step.input_map:
            if key not in model_inputs:
                raise LoadError(f"{label}: input_map names '{key}', which is not an input of the model "
                                f"({sorted(model_inputs)})")
        missing = sorted(set(model_inputs) - set(step.input_map))
        if missing:
            raise LoadError(f"{label}: input_map does not feed the model's input(s) {missing}")
        for key, tensor in step.output_map.items():
            if key not in model_outputs:
                raise LoadError(f"{label}: output_map names '{key}', which is not an output of the model "
                                f"({sorted(model_outputs)})")
            if tensor in producer or tensor in inputs:
                raise LoadError(f"{label}: ensemble tensor '{tensor}' is written twice")
            producer[tensor] = index
            known = types.setdefault(tensor, model_outputs[key])
            if known != model_outputs[key]:
                raise LoadError(f"{label}: output '{key}' is {model_outputs[key]} but ensemble tensor "
                                f"'{tensor}' is {known}")
        steps.append(EnsembleStep(index, step.model_name, version, tuple(sorted(step.input_map.items())),
                                  tuple(sorted(step.output_map.items()))))
    for planned in steps:
        model_inputs, _, _ = lookup(planned.model_name, planned.model_version)
        for key, tensor in planned.input_map:
            if tensor not in producer and tensor not in inputs:
                raise LoadError(f"{planned.label}: input '{key}' reads ensemble tensor '{tensor}', which no "
                                "step writes and the ensemble does not take")
            if types.get(tensor, model_inputs[key]) != model_inputs[key]:
                raise LoadError(f"{planned.label}: input '{key}' is {model_inputs[key]} but ensemble tensor "
                                f"'{tensor}' is {types[tensor]}")
    for out in config.output:
        if out.name not in producer:
            raise LoadError(f"ensemble output '{out.name}' is written by no step")
    _check_acyclic(steps, producer)
    return EnsemblePlan(config.name, tuple(steps), inputs, tuple(t.name for t in config.output), producer)


def _check_acyclic(steps: list[EnsembleStep], producer: dict[str, int]) -> None:
    done: set[int] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if all(producer.get(t, -1) in done or t not in producer
                                             for _, t in s.input_map)]
        if not ready:
            raise LoadError(f"the steps {[s.index for s in remaining]} wait on each other (a cycle)")
        done.update(s.index for s in ready)
        remaining = [s for s in remaining if s.index not in done]

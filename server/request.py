"""The internal inference request: what the scheduler queues and a transport waits on.

It carries numpy views of the inputs (no copies), the requested outputs, the
scheduling fields (priority, timeout, deadline) and the timestamps that feed
statistics and traces. When the scheduler is done it sets ``outputs`` or
``error`` and hands the request to its ``sink``, once per batch for all the
requests of that batch (one thread hop per batch, not per request).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy.typing as npt

if TYPE_CHECKING:
    from .statistics import ModelStatistics
    from .telemetry.drift import DriftMonitor
    from .tensor_info import TensorInfo

__all__ = ["CompletionSink", "InferRequest", "ModelScheduler", "RequestedOutput", "ServedModel", "by_sink"]


class ShmWindow(NamedTuple):
    """Where a tensor lives in a registered shared-memory region (Triton's shared_memory_* parameters)."""

    region: str
    offset: int
    byte_size: int


class RequestedOutput(NamedTuple):
    name: str
    classification: int  # top-k classes as BYTES "value:index[:label]"; 0 = the tensor itself
    shm: ShmWindow | None = None  # write the output there instead of into the response


class CompletionSink(Protocol):
    """Where finished requests go; called from a worker thread once per batch."""

    def deliver(self, requests: Sequence[InferRequest]) -> None: ...


class ModelScheduler(Protocol):
    """What the server asks of a model version's scheduler (scheduler.Scheduler, ensemble.EnsembleScheduler)."""

    statistics: ModelStatistics
    drift: DriftMonitor | None

    @property
    def pending(self) -> int: ...

    @property
    def instance_count(self) -> int: ...

    def start(self) -> None: ...

    def submit(self, request: InferRequest) -> None: ...

    def cancel(self, request: InferRequest) -> bool: ...

    def stop(self, timeout: float | None = 30.0) -> None: ...


class ServedModel(Protocol):
    """What a request needs of its model version (model_version.ModelVersion is the one there is)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def version_str(self) -> str: ...

    @property
    def batching(self) -> bool: ...

    @property
    def inputs(self) -> Mapping[str, TensorInfo]: ...

    @property
    def outputs(self) -> Mapping[str, TensorInfo]: ...

    @property
    def labels(self) -> Mapping[str, list[str]]: ...

    @property
    def scheduler(self) -> ModelScheduler | None: ...

    @property
    def response_cache(self) -> bool: ...

    @property
    def engine_kind(self) -> str: ...

    @property
    def precision(self) -> str: ...


class InferRequest:
    """One ModelInfer call on its way through the server."""

    __slots__ = (
        "arrival_ns",
        "batch_size",
        "cache_entry",
        "cancelled",
        "compute_end_ns",
        "compute_input_end_ns",
        "compute_output_start_ns",
        "compute_start_ns",
        "deadline_ns",
        "error",
        "id",
        "inputs",
        "level",
        "merge_key",
        "model",
        "outputs",
        "parameters",
        "priority",
        "requested",
        "sink",
        "timeout_us",
        "trace",
        "version_named",
        "waiter",
    )

    def __init__(
        self,
        model: ServedModel,
        request_id: str,
        inputs: dict[str, npt.NDArray[Any]],
        requested: list[RequestedOutput],
        batch_size: int,
        merge_key: tuple[Any, ...],
        arrival_ns: int,
    ) -> None:
        self.model = model
        self.id = request_id
        self.inputs = inputs
        self.requested = requested
        self.batch_size = batch_size  # rows along axis 0; 1 for a model that does not batch
        self.merge_key = merge_key  # requests merge into one run only when these are equal
        self.arrival_ns = arrival_ns
        self.priority = 0  # 0 = the model's default level
        self.level = 0  # the scheduler queue holding it; -1 = delayed after a timeout
        self.timeout_us = 0  # 0 = none
        self.deadline_ns = 0  # monotonic ns; 0 = none
        self.parameters: dict[str, Any] = {}
        self.sink: CompletionSink | None = None
        self.cancelled = False
        self.outputs: dict[str, npt.NDArray[Any]] | None = None
        self.error: BaseException | None = None
        self.compute_start_ns = 0
        self.compute_input_end_ns = 0
        self.compute_output_start_ns = 0
        self.compute_end_ns = 0
        self.trace: Any = None
        self.waiter: Any = None  # the transport's future/event for this request
        self.version_named = False  # the client named a version (else "latest", which a rollout may move)
        self.cache_entry: Any = None  # a response cache miss: (key, lookup ns), taken when it is delivered


def by_sink(requests: Sequence[InferRequest]) -> list[tuple[CompletionSink, list[InferRequest]]]:
    """Finished requests grouped by where they go, in order: one deliver call per sink and batch."""
    groups: dict[int, tuple[CompletionSink, list[InferRequest]]] = {}
    for r in requests:
        if r.sink is None:
            continue
        entry = groups.get(id(r.sink))
        if entry is None:
            groups[id(r.sink)] = (r.sink, [r])
        else:
            entry[1].append(r)
    return list(groups.values())

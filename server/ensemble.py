"""Ensembles at run time: a request flows through its steps in process, never over the wire.

``EnsembleScheduler`` stands where a model's ``Scheduler`` stands (submit,
cancel, statistics, stop), so the transports and the data plane treat an
ensemble as any other model. A request becomes one ``_Run``: every step whose
input tensors are all known is submitted to its composing model's own
scheduler (through the response cache when that model has one), so composing
models batch independently, with requests from other ensembles and from
clients calling them directly; each composing model counts its own statistics.
When a step finishes (in that model's worker thread), its outputs become
ensemble tensors and the steps they unblock start; when the last step is done
the ensemble's requested outputs go back to the caller. A failed step fails the
request with an error naming the step and model. Traced requests get a span
per step under the ensemble's model span.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import CodecError
from tensorgate.clients.pb import model_config_pb2 as mc

from .ensemble_plan import ENSEMBLE_PLATFORM, EnsemblePlan, EnsembleStep, plan_ensemble
from .errors import (
    CancelledError,
    InvalidArgumentError,
    LoadError,
    ServerError,
    StepFailedError,
    UnavailableError,
)
from .model_version import ModelState, ModelVersion, set_tensors
from .request import InferRequest, RequestedOutput
from .statistics import ModelStatistics
from .telemetry.log_fields import model_state
from .text_guard import TextGuard

if TYPE_CHECKING:
    from .telemetry.drift import DriftMonitor

__all__ = ["EnsembleScheduler", "load_ensemble"]

log = logging.getLogger("tensorgate.ensemble")
_now = time.monotonic_ns

Resolve = Callable[[str, str], ModelVersion]
Submit = Callable[[InferRequest], None]


def _step_error(plan: EnsemblePlan, step: EnsembleStep, exc: BaseException) -> ServerError:
    """The error the ensemble's caller sees: same status, message naming the step."""
    where = f"ensemble '{plan.name}' {step.label}"
    if isinstance(exc, ServerError) and exc.public:
        err = type(exc)(f"{where}: {exc}")
    else:
        err = StepFailedError(f"{where} failed; the server log has the details")
    return err


class _StepSink:
    """Where a step's request goes when its model is done with it."""

    __slots__ = ("run", "step")

    def __init__(self, run: _Run, step: EnsembleStep) -> None:
        self.run = run
        self.step = step

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        for r in requests:
            self.run.step_done(self.step, r)


class _Run:
    """One ensemble request on its way through the steps."""

    def __init__(self, owner: EnsembleScheduler, request: InferRequest) -> None:
        self.owner = owner
        self.request = request
        self.tensors: dict[str, npt.NDArray[Any]] = dict(request.inputs)
        self.waiting = list(owner.plan.steps)
        self.running: dict[int, InferRequest] = {}
        self.lock = threading.Lock()
        self.finished = False
        self.queue_ns = 0
        self.compute = [0, 0, 0]

    def start(self) -> None:
        """Submit the steps the ensemble's inputs unblock; raises for the first step's refusal."""
        with self.lock:
            ready = self._take_ready()
        for step in ready:
            self._launch(step, raise_errors=True)

    def _take_ready(self) -> list[EnsembleStep]:
        ready = [s for s in self.waiting if all(t in self.tensors for _, t in s.input_map)]
        for s in ready:
            self.waiting.remove(s)
        return ready

    def _launch(self, step: EnsembleStep, raise_errors: bool = False) -> None:
        owner = self.owner
        try:
            model = owner.resolve(step.model_name, step.model_version)
            sub = _step_request(model, self.request, step, self.tensors)
            guard = model.input_guard
            if guard is not None:
                guard.after(model.name, sub.inputs)
            sub.sink = _StepSink(self, step)
            if self.request.trace is not None:
                self.request.trace.tracer.begin_step(self.request, sub)
            with self.lock:
                self.running[step.index] = sub
            owner.submit_step(sub)
        except Exception as exc:
            with self.lock:
                self.running.pop(step.index, None)
            err = _step_error(owner.plan, step, exc)
            if not isinstance(exc, ServerError) or not exc.public:
                log.error("ensemble %s %s could not start: %s", owner.plan.name, step.label, exc,
                          exc_info=not isinstance(exc, ServerError))
            if raise_errors and not self.running:
                self.finished = True
                owner.statistics.record_failures([self.request], _now(), "OTHER")
                raise err from None
            self._fail(err)

    def step_done(self, step: EnsembleStep, sub: InferRequest) -> None:
        try:
            self._step_done(step, sub)
        except Exception as exc:  # a fault here must still answer the caller
            log.exception("ensemble %s %s: handing on its outputs failed", self.owner.plan.name, step.label)
            self._fail(_step_error(self.owner.plan, step, exc))

    def _step_done(self, step: EnsembleStep, sub: InferRequest) -> None:
        tracer = sub.trace.tracer if sub.trace is not None else None
        if tracer is not None:
            tracer.end(sub)
        if sub.error is not None or sub.outputs is None:
            error = sub.error or CancelledError("the step was cancelled")
            if not (isinstance(error, ServerError) and error.public):
                log.error("ensemble %s %s failed for request %r: %s", self.owner.plan.name, step.label,
                          self.request.id, error)
            self._fail(_step_error(self.owner.plan, step, error))
            return
        with self.lock:
            self.running.pop(step.index, None)
            if self.finished:
                return
            for key, tensor in step.output_map:
                self.tensors[tensor] = sub.outputs[key]
            if sub.compute_start_ns:
                self.queue_ns += sub.compute_start_ns - sub.arrival_ns
                self.compute[0] += sub.compute_input_end_ns - sub.compute_start_ns
                self.compute[1] += sub.compute_output_start_ns - sub.compute_input_end_ns
                self.compute[2] += sub.compute_end_ns - sub.compute_output_start_ns
            ready = [] if self.request.cancelled else self._take_ready()
            done = not self.waiting and not self.running and not ready
            cancelled = self.request.cancelled and not self.running
        for nxt in ready:
            self._launch(nxt)
        if cancelled:
            self._fail(CancelledError("the client cancelled the request"))
        elif done:
            self._succeed()

    def _succeed(self) -> None:
        r = self.request
        outputs = {out.name: self.tensors[out.name] for out in r.requested}
        with self.lock:
            if self.finished:
                return
            self.finished = True
        r.outputs = outputs
        self.owner.finish(self, None)

    def _fail(self, error: ServerError) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        self.request.error = error
        self.owner.finish(self, error)

    def cancel(self) -> None:
        with self.lock:
            running = list(self.running.items())
        for _, sub in running:
            scheduler = sub.model.scheduler
            if scheduler is not None and scheduler.cancel(sub):  # dropped: it will never be delivered
                with self.lock:
                    self.running = {k: v for k, v in self.running.items() if v is not sub}
        with self.lock:
            idle = not self.running
        if idle:
            self._fail(CancelledError("the client cancelled the request"))


def _step_request(model: ModelVersion, parent: InferRequest, step: EnsembleStep,
                  tensors: dict[str, npt.NDArray[Any]]) -> InferRequest:
    """The composing model's request for one step, checked as a client's would be."""
    inputs: dict[str, npt.NDArray[Any]] = {}
    batch = -1
    for key, tensor in step.input_map:
        array = tensors[tensor]
        info = model.inputs.get(key)
        if info is None:
            raise UnavailableError(f"model '{model.name}' no longer has input '{key}'")
        if array.dtype != info.np_dtype and not (info.datatype == "BYTES" and array.dtype == np.object_):
            raise InvalidArgumentError(f"input '{key}' gets {array.dtype} data, the model takes {info.datatype}")
        rank, fixed = model.shape_checks[key]
        shape = array.shape
        if len(shape) != rank or any(shape[axis] != dim for axis, dim in fixed):
            raise InvalidArgumentError(f"input '{key}' gets shape {list(shape)}, the model takes "
                                       f"{info.wire_shape(model.batching)}")
        rows = shape[0] if model.batching else 1
        if model.batching and rows > model.max_batch_size:
            raise InvalidArgumentError(f"batch size {rows} is more than the model's max_batch_size "
                                       f"{model.max_batch_size}")
        if batch not in (-1, rows):
            raise InvalidArgumentError(f"input '{key}' has batch size {rows}, other inputs have {batch}")
        batch = rows
        if info.reshape is not None:
            array = array.reshape(((rows,) if model.batching else ()) + info.reshape)
        inputs[key] = array
    merge_key = tuple((n, a.shape[1:]) for n, a in inputs.items()) if model.batching else ()
    requested = [RequestedOutput(key, 0) for key, _ in step.output_map]
    sub = InferRequest(model, parent.id, inputs, requested, max(batch, 1), merge_key, _now())
    sub.priority = parent.priority
    sub.timeout_us = parent.timeout_us
    sub.deadline_ns = parent.deadline_ns
    return sub


class EnsembleScheduler:
    """Runs an ensemble's requests through its steps; stands where a model's Scheduler stands.

    Args:
        model: the ensemble's model version.
        plan: its checked steps.
        resolve: (model name, version) -> the ready composing model version (raises ServerError).
        submit_step: queues a step's request on its composing model (through the response cache).
    """

    def __init__(self, model: ModelVersion, plan: EnsemblePlan, resolve: Resolve, submit_step: Submit) -> None:
        self.model = model
        self.plan = plan
        self.resolve = resolve
        self.submit_step = submit_step
        self.statistics = ModelStatistics()
        self.drift: DriftMonitor | None = None
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._idle = threading.Condition(self._lock)

    @property
    def pending(self) -> int:
        return len(self._runs)

    @property
    def instance_count(self) -> int:
        return 0

    def start(self) -> None:
        pass

    def submit(self, request: InferRequest) -> None:
        with self._lock:
            if self._stopping:
                self.statistics.record_failures([request], _now(), "OTHER")
                raise UnavailableError(f"ensemble '{self.plan.name}' is unloading")
            run = _Run(self, request)
            self._runs[id(request)] = run
        try:
            run.start()
        except BaseException:
            with self._lock:
                self._runs.pop(id(request), None)
                self._idle.notify_all()
            raise

    def cancel(self, request: InferRequest) -> bool:
        """Cancel the steps still queued; the request is answered CANCELLED once none is running."""
        request.cancelled = True
        run = self._runs.get(id(request))
        if run is not None:
            run.cancel()
        return False

    def finish(self, run: _Run, error: ServerError | None) -> None:
        r = run.request
        end = _now()
        if error is None:
            self.statistics.record_ensemble(r, run.queue_ns, run.compute, end)
        else:
            reason = "CANCELED" if isinstance(error, CancelledError) else "OTHER"
            self.statistics.record_failures([r], end, reason)
        with self._lock:
            self._runs.pop(id(r), None)
            self._idle.notify_all()
        sink = r.sink
        if sink is not None:
            try:
                sink.deliver([r])
            except Exception:
                log.exception("delivering results for ensemble %s failed", self.plan.name)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests; wait for those in flight (their steps finish in the composing models)."""
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        with self._lock:
            self._stopping = True
            while self._runs and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))


def load_ensemble(name: str, version: int, version_dir: Path, given: mc.ModelConfig, resolve: Resolve,
                  submit_step: Submit) -> ModelVersion:
    """Load one ensemble version: check its plan against the composing models. Never raises."""
    mv = ModelVersion(name, version, version_dir.parent)
    try:
        config = mc.ModelConfig()
        config.CopyFrom(given)
        config.platform = ENSEMBLE_PLATFORM
        if config.max_batch_size < 0:
            raise LoadError(f"max_batch_size must be >= 0, got {config.max_batch_size}")
        if not config.HasField("version_policy"):
            config.version_policy.latest.num_versions = 1

        def lookup(model: str, model_version: str) -> tuple[dict[str, str], dict[str, str], int]:
            try:
                step = resolve(model, model_version)
            except ServerError as exc:
                raise LoadError(f"composing model '{model}' is not available: {exc}") from None
            return ({n: t.datatype for n, t in step.inputs.items()},
                    {n: t.datatype for n, t in step.outputs.items()}, step.max_batch_size)

        plan = plan_ensemble(config, lookup)
        set_tensors(mv, config)
        mv.input_guard = _ensemble_guard(plan, resolve)
        mv.scheduler = EnsembleScheduler(mv, plan, resolve, submit_step)
        mv.state = ModelState.READY
        log.info("ensemble %s version %d READY: %d step(s): %s", name, version, len(plan.steps),
                 " -> ".join(s.model_name for s in plan.steps), extra=model_state(name, version, "READY"))
    except (LoadError, CodecError) as exc:
        mv.fail(str(exc))
        log.error("ensemble %s version %d UNAVAILABLE: %s", name, version, exc,
                  extra=model_state(name, version, "UNAVAILABLE", mv.reason))
    return mv


def _ensemble_guard(plan: EnsemblePlan, resolve: Resolve) -> TextGuard | None:
    """The text caps of the steps that read the ensemble's own inputs, applied to those inputs."""
    guard: TextGuard | None = None
    for step in plan.steps:
        model_guard = resolve(step.model_name, step.model_version).input_guard
        if model_guard is None:
            continue
        limits = {t: model_guard.limits[k] for k, t in step.input_map if t in plan.inputs and k in model_guard.limits}
        if limits:
            guard = TextGuard(limits).merged(guard)
    return guard

"""The per-model scheduler: Triton's dynamic batcher over a pool of instance threads.

It takes the model version's plan (plan.py), never its config, and keeps its
requests in a PriorityQueue (priority_queue.py: levels, queue policies,
timeouts, cancellation, the ordered take); this module decides when a batch
goes, adapts the queue delay, runs the workers and delivers results.

Each engine instance has one worker thread. A free worker takes the next batch
from the queue: requests in priority order (level 1 first), then arrival
order, merged while their non-batch shapes match and the rows fit
max_batch_size. A batch is sent at once when it is full or a preferred size,
or when max_queue_delay_microseconds (default 0: never wait) has passed for
its oldest request; otherwise the worker waits for more. Without
dynamic_batching each request runs alone, on every instance in parallel.

Queue policy per priority level (applied by the queue; the answers are given
here): max_queue_size (a full queue rejects at once, UNAVAILABLE), default
timeout with REJECT (DEADLINE_EXCEEDED, never computed) or DELAY (served after
every request that has not timed out), and allow_timeout_override. A cancelled
request leaves the queue.

Workers stamp the request timestamps (statistics, traces), run the engine
with the GIL released, split the outputs back as views, and hand the finished
requests to their sinks once per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.engines import EngineError, EngineInstance

from .errors import DeadlineExceededError, InternalError, QueueFullError, RetiredError, UnavailableError
from .plan import ModelPlan
from .priority_queue import PriorityQueue
from .request import InferRequest, by_sink
from .statistics import ModelStatistics
from .telemetry import tracing as _tracing

if TYPE_CHECKING:
    from .telemetry.drift import DriftMonitor

__all__ = ["Scheduler"]

log = logging.getLogger("tensorgate.scheduler")
_now = time.monotonic_ns


_PROBE_INTERVAL_NS = 50_000_000  # with adaptive delay off-track, still try waiting every 50 ms
_PAYOFF_FLOOR = 0.25  # below this share of waits that grew a batch, stop waiting
_QUIET_GAPS = 3  # arrivals have paused after this many typical in-burst gaps...
_MIN_QUIET_NS = 100_000  # ...and at least this long
# an instance whose engine runs more than this share of the time is the bottleneck: never idle it (the
# next batch forms while it runs). Engine time only: hand-offs and GIL waits would count the server's own
# overhead as engine load, and a batcher that stops waiting makes more of them.
_SATURATED = 0.75
_BUSY_WEIGHT = 0.2  # weight of the newest batch in an instance's engine-share average


class Scheduler:
    """Queues a model's requests and runs them in batches on its instances."""

    def __init__(self, plan: ModelPlan, instances: list[EngineInstance]) -> None:
        batching = plan.batching
        self._name = plan.model
        self._version = plan.version
        self._instances = instances
        self.statistics = ModelStatistics()
        self.drift: DriftMonitor | None = None  # output drift monitor (model.py sets it when configured)
        self._dynamic = batching.dynamic
        self._max_rows = batching.max_rows
        self._preferred = batching.preferred
        self._delay_ns = batching.delay_ns
        self._preserve_ordering = batching.preserve_ordering
        self._queue = PriorityQueue(batching)
        self._cond = threading.Condition(threading.Lock())
        # wake-ups cost GIL time on both threads: wake an idle worker for every arrival, but a worker
        # that is waiting out the queue delay only once its batch could be full or preferred
        self._idle_waiters = 0
        self._delay_waiters = 0
        self._delay_rows = 0
        self._delay_until_ns = 0  # when the worker waiting out the delay will look again
        self._wake_rows = (self._preferred[0] if self._preferred else self._max_rows) or 1
        # adaptive queue delay (tensorgate): stop waiting while waits stop growing batches (a lone
        # client gains nothing from them), probing again now and then
        self._adaptive = self._delay_ns > 0 and batching.adaptive_delay
        if self._dynamic and not self._delay_ns and self._max_rows > 1:
            log.info(
                "model %s: dynamic batching with max_queue_delay_microseconds 0 forms small batches under "
                "load on a busy host; 1000-2000 usually doubles batch size (tensorgate skips the wait "
                "while it does not grow batches, so a lone client stays fast)", self._name,
            )
        self._wait_payoff = 1.0
        self._last_probe_ns = 0
        # ...and stop waiting once arrivals pause: all the clients' requests are in (a closed loop of
        # N clients sends N requests, then waits). Gaps are measured while a batch is forming.
        self._last_arrival_ns = 0
        self._burst_gap_ns = 0.0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._pending = 0
        # preserve_ordering: hand requests back in submission order
        self._next_seq = 0
        self._deliver_seq = 0
        self._held: dict[int, InferRequest | None] = {}
        self._seq: dict[int, int] = {}
        self._order_lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        for index, instance in enumerate(self._instances):
            thread = threading.Thread(
                target=self._work,
                args=(instance,),
                name=f"tg-{self._name}-{self._version}-{index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, stop the workers.

        After `timeout` seconds the requests still queued fail with UNAVAILABLE; a batch
        already running finishes (an engine run cannot be interrupted) and keeps its instance.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._fail_queued(timeout)
        for index, instance in enumerate(self._instances):
            if index < len(self._threads) and self._threads[index].is_alive():
                log.warning("model %s version %s: instance %d is still running a batch after %s s; "
                            "it is released when the batch ends", self._name, self._version,
                            index, timeout)
                continue
            instance.close()

    def _fail_queued(self, timeout: float | None) -> None:
        """Fail what is still queued once the unload's wait is over."""
        with self._cond:
            left = self._queue.clear()
            self._pending -= len(left)
        if not left:
            return
        for r in left:
            r.error = UnavailableError(
                f"model '{self._name}' version {self._version} was unloaded before this request "
                f"ran (in-flight requests were given {timeout or 0:g} s to finish); retry"
            )
        log.warning("model %s version %s: %d queued request(s) failed: unloaded after %s s",
                    self._name, self._version, len(left), timeout)
        self.statistics.record_failures(left, _now(), "OTHER")
        self._deliver(left)

    @property
    def pending(self) -> int:
        """Requests queued or running (Triton's pending_request_count)."""
        return self._pending

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    # ---- submission ----------------------------------------------------------

    def submit(self, request: InferRequest) -> None:
        """Queue a request; raises QueueFullError or UnavailableError at once."""
        queue = self._queue
        queue.assign(request)  # its level and queue deadline
        with self._cond:
            if self._stopping:
                self.statistics.record_failures([request], _now(), "OTHER")
                raise RetiredError(f"model '{self._name}' version {self._version} is unloading")
            waiting = queue.push(request)
            if waiting < 0:
                self.statistics.record_queue_full(request, _now())
                raise QueueFullError(
                    f"model '{self._name}' queue is full (max_queue_size {queue.max_size(request)}); "
                    "request rejected, retry later",
                    self._name,
                )
            if self._preserve_ordering:
                self._seq[id(request)] = self._next_seq
                self._next_seq += 1
            if self._adaptive:
                if waiting:  # a batch is forming: this gap is an in-burst gap
                    gap = request.arrival_ns - self._last_arrival_ns
                    self._burst_gap_ns = gap if not self._burst_gap_ns else 0.9 * self._burst_gap_ns + 0.1 * gap
                self._last_arrival_ns = request.arrival_ns
            self._pending += 1
            if self._delay_waiters:
                if self._wake_delayed(request):
                    self._cond.notify_all()
            elif self._idle_waiters:
                self._cond.notify()

    def _quiet_ns(self) -> float:
        """How long arrivals must pause before the adaptive delay takes the batch to be complete."""
        return max(_MIN_QUIET_NS, _QUIET_GAPS * self._burst_gap_ns)

    def _wake_delayed(self, request: InferRequest) -> bool:
        """After an arrival: must a worker waiting out the queue delay look now?

        Yes when the batch could now be full or preferred, or when it planned to sleep past
        the point where the adaptive delay would see arrivals pausing.
        """
        self._delay_rows += request.batch_size
        if self._delay_rows >= self._wake_rows:
            return True
        if self._adaptive and self._burst_gap_ns:
            return self._delay_until_ns > request.arrival_ns + self._quiet_ns()
        return False

    def cancel(self, request: InferRequest) -> bool:
        """The client went away: drop the request if it is still queued.

        Returns True when it was dropped (it will never be delivered), False when it is
        already running (it will be delivered as usual).
        """
        request.cancelled = True
        with self._cond:
            if not self._queue.remove(request):
                return False
            self._pending -= 1
        self._skip(request)
        self.statistics.record_failures([request], _now(), "CANCELED")
        return True

    # ---- batch formation (called with the lock held) -------------------------

    def _take_batch(self, now: int, saturated: bool = False) -> tuple[list[InferRequest], float | None, int]:
        """Return (batch, 0, rows) to run now, or ([], seconds to wait, rows); None = until notified.

        ``saturated``: the asking instance is busy most of the time (adaptive delay only).
        """
        queue = self._queue
        cancelled: list[InferRequest] = []
        batch, rows, preferred_cut, full = queue.take(self._max_rows, self._dynamic, self._preferred, cancelled)
        if cancelled:
            self._pending -= len(cancelled)
            for r in cancelled:
                self._skip(r)
            self.statistics.record_failures(cancelled, now, "CANCELED")
        if not batch:
            return batch, None, 0
        wait_ns = batch[0].arrival_ns + self._delay_ns - now
        if full or self._delay_ns == 0 or wait_ns <= 0 or self._stopping:
            return batch, 0, rows
        if preferred_cut:
            queue.requeue(batch[preferred_cut:])
            return batch[:preferred_cut], 0, rows
        if self._adaptive:
            if saturated:
                # the engine is the bottleneck (a compute-bound model under load): waiting for a fuller
                # batch idles it and buys nothing, since a batch's cost grows with its rows
                return batch, 0, rows
            if self._wait_payoff < _PAYOFF_FLOOR:
                if now - self._last_probe_ns < _PROBE_INTERVAL_NS:
                    return batch, 0, rows
                self._last_probe_ns = now
            if self._burst_gap_ns:
                quiet_ns = now - self._last_arrival_ns
                enough_ns = self._quiet_ns()
                if quiet_ns >= enough_ns:
                    return batch, 0, rows
                wait_ns = min(wait_ns, int(enough_ns - quiet_ns) + 1)
        queue.requeue(batch)
        if queue.with_deadline:
            # wake up in time to answer a request whose deadline falls inside the wait
            deadlines = [r.deadline_ns for r in batch if r.deadline_ns]
            if deadlines:
                wait_ns = max(0, min(wait_ns, min(deadlines) - now))
        return [], wait_ns / 1e9, rows

    # ---- workers -------------------------------------------------------------------

    def _work(self, instance: EngineInstance) -> None:
        buffers: dict[Any, npt.NDArray[Any]] = {}  # this instance's batch input buffers
        busy = 0.0  # this instance's engine share: engine run time / time since its previous batch, averaged
        last_end = 0
        backlog = False  # looking at the queue right after a batch: what is there arrived during that run
        while True:
            expired: list[InferRequest] = []
            waited_rows = 0  # rows the batch had when this worker began waiting out the delay
            with self._cond:
                while True:
                    now = _now()
                    self._queue.expire(now, expired)
                    if expired:
                        self._pending -= len(expired)
                        break
                    # a saturated engine runs its backlog at once; an instance that found the queue empty
                    # and waited for arrivals is not saturated at the moment, so the usual rules apply
                    batch, wait, rows = self._take_batch(now, backlog and busy > _SATURATED)
                    if batch:
                        if waited_rows and self._adaptive:
                            grew = 1.0 if rows > waited_rows else 0.0
                            self._wait_payoff = 0.6 * self._wait_payoff + 0.4 * grew
                        break
                    if self._stopping and not self._queue:
                        return
                    backlog = False
                    if wait is None:
                        self._idle_waiters += 1
                        self._cond.wait()
                        self._idle_waiters -= 1
                    else:
                        waited_rows = waited_rows or rows
                        self._delay_waiters += 1
                        self._delay_rows = rows
                        self._delay_until_ns = _now() + int(wait * 1e9)
                        self._cond.wait(wait)
                        self._delay_waiters -= 1
            if expired:
                for r in expired:
                    r.error = DeadlineExceededError(
                        f"request for model '{self._name}' timed out in the queue "
                        f"after {(now - r.arrival_ns) // 1000} us; it was not computed"
                    )
                self.statistics.record_failures(expired, now, "REJECTED")
                self._deliver(expired)
                continue
            run_ns = self._execute(instance, batch, buffers)
            backlog = True
            end = _now()
            if last_end:
                busy += _BUSY_WEIGHT * (run_ns / max(1, end - last_end) - busy)
            last_end = end

    def _merge(self, batch: list[InferRequest], name: str, buffers: dict[Any, npt.NDArray[Any]] | None) -> npt.NDArray[Any]:
        """One input of a batch along axis 0, into the instance's preallocated buffer when it fits."""
        if len(batch) == 1:
            return batch[0].inputs[name]
        parts = [r.inputs[name] for r in batch]
        first = parts[0]
        if buffers is None or first.dtype == np.object_:
            return np.concatenate(parts, axis=0)
        key = (name, first.shape[1:], first.dtype)
        buffer = buffers.get(key)
        if buffer is None:
            # sized for max_batch_size; an instance runs one batch at a time, so it is never shared
            buffer = buffers[key] = np.empty((self._max_rows, *first.shape[1:]), dtype=first.dtype)
        rows = sum(p.shape[0] for p in parts)
        return np.concatenate(parts, axis=0, out=buffer[:rows])

    def _prepare_inputs(
        self, batch: list[InferRequest], buffers: dict[Any, npt.NDArray[Any]] | None = None
    ) -> tuple[dict[str, npt.NDArray[Any]], list[str]]:
        """The merged inputs and the union of requested outputs of a batch."""
        wanted: dict[str, None] = {}
        for r in batch:
            for out in r.requested:
                wanted[out.name] = None
        return {name: self._merge(batch, name, buffers) for name in batch[0].inputs}, list(wanted)

    def _finish(
        self, batch: list[InferRequest], results: dict[str, npt.NDArray[Any]], start: int, input_end: int,
        output_start: int, buffers: dict[Any, npt.NDArray[Any]] | None = None,
    ) -> None:
        """Split the outputs back per request (views), stamp times, count the batch."""
        if buffers:
            # an engine may hand an input straight back (Identity): never let a reused buffer leak out
            results = {
                n: v.copy() if any(np.may_share_memory(v, b) for b in buffers.values()) else v
                for n, v in results.items()
            }
        if len(batch) == 1:
            batch[0].outputs = results
        else:
            offset = 0
            for r in batch:
                end = offset + r.batch_size
                r.outputs = {n: v[offset:end] for n, v in results.items()}
                offset = end
        end_ns = _now()
        for r in batch:
            r.compute_input_end_ns = input_end
            r.compute_output_start_ns = output_start
            r.compute_end_ns = end_ns
        self.statistics.record_batch(batch, start, input_end, output_start, end_ns)
        if self.drift is not None:
            self.drift.observe(results)

    def _fail_batch(self, batch: list[InferRequest], exc: BaseException) -> None:
        """The engine failed: every request of this batch fails with INTERNAL; the log keeps why."""
        ids = [r.id for r in batch]
        log.error("model %s version %s: batch of %d request(s) %s failed: %s",
                  self._name, self._version, len(batch), ids, exc, exc_info=not isinstance(exc, EngineError))
        for r in batch:
            r.error = InternalError(f"model '{self._name}' failed to run this request")
        self.statistics.record_failures(batch, _now(), "BACKEND")

    def _execute(
        self, instance: EngineInstance, batch: list[InferRequest], buffers: dict[Any, npt.NDArray[Any]]
    ) -> int:
        """Run one batch and hand it on; returns the engine's run time in ns."""
        start = _now()
        run_ns = 0
        for r in batch:
            r.compute_start_ns = start
        try:
            inputs, names = self._prepare_inputs(batch, buffers)
            input_end = _now()
            results = instance.run(inputs, names)
            output_start = _now()
            run_ns = output_start - input_end
            self._finish(batch, results, start, input_end, output_start, buffers)
        except Exception as exc:  # the batch fails, the instance keeps serving
            self._fail_batch(batch, exc)
        self._complete(batch, threading.current_thread().name)
        return run_ns

    def _complete(self, batch: list[InferRequest], instance: str = "") -> None:
        """An executed batch (succeeded or failed) leaves the scheduler and goes to its sinks."""
        with self._cond:
            self._pending -= len(batch)
        if _tracing.ANY_ACTIVE:
            _tracing.record_batch(batch, instance)
        self._deliver(batch)

    def _deliver(self, requests: list[InferRequest]) -> None:
        if self._preserve_ordering:
            requests = self._in_order(requests)
        for sink, group in by_sink(requests):
            try:
                sink.deliver(group)
            except Exception:  # a transport that went away must not kill the worker
                log.exception("delivering results for model %s failed", self._name)

    def _skip(self, request: InferRequest) -> None:
        """A request that will never be delivered must not hold back the ones after it."""
        if self._preserve_ordering:
            with self._order_lock:
                seq = self._seq.pop(id(request), None)
                if seq is not None:
                    self._held[seq] = None

    def _in_order(self, requests: list[InferRequest]) -> list[InferRequest]:
        """Hold finished requests until every request submitted before them is done."""
        ready: list[InferRequest] = []
        with self._order_lock:
            for r in requests:
                seq = self._seq.pop(id(r), None)
                if seq is None:
                    ready.append(r)
                else:
                    self._held[seq] = r
            while self._deliver_seq in self._held:
                held = self._held.pop(self._deliver_seq)
                if held is not None:
                    ready.append(held)
                self._deliver_seq += 1
        return ready

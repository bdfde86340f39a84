"""Dynamic batcher and instance pool behaviour, with fake engine instances (plain EngineInstance classes).

Each test controls when the fake instance runs (a gate) so batch formation is
deterministic; timing only appears as lower bounds or generous upper bounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import text_format

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines import EngineRunError
from tensorgate.server.errors import DeadlineExceededError, InternalError, QueueFullError
from tensorgate.server.model import ModelVersion, TensorInfo
from tensorgate.server.plan import read_plan
from tensorgate.server.request import InferRequest, RequestedOutput
from tensorgate.server.scheduler import Scheduler

NOT_ADAPTIVE = 'parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }'


class FakeInstance:
    """Doubles INPUT0 into OUTPUT0; records every batch; can wait on a gate, sleep, or fail."""

    def __init__(self, gate: threading.Event | None = None, sleep: float = 0.0) -> None:
        self.gate = gate
        self.sleep = sleep
        self.batches: list[list[float]] = []  # first column of every row run
        self.started = threading.Event()
        self.closed = False

    def run(self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        x = inputs["INPUT0"]
        self.batches.append(x[:, 0].tolist())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.sleep:
            time.sleep(self.sleep)
        if (x < 0).any():
            raise EngineRunError("negative input")
        return {"OUTPUT0": x * 2}

    def close(self) -> None:
        self.closed = True


class Collector:
    """A completion sink that records finished requests."""

    def __init__(self) -> None:
        self.done: list[InferRequest] = []
        self.cond = threading.Condition()

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        with self.cond:
            self.done.extend(requests)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> list[InferRequest]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.done) >= count, timeout), f"{len(self.done)}/{count} done"
            return list(self.done)


MODELS: dict[int, ModelVersion] = {}  # scheduler id -> the model version its requests name


def make_model(config_text: str, max_batch_size: int) -> ModelVersion:
    mv = ModelVersion("fake", 1, Path("."))
    config = text_format.Parse(config_text, mc.ModelConfig())
    config.name = "fake"
    config.max_batch_size = max_batch_size
    mv.config = config
    mv.plan = read_plan(config, 1)
    mv.max_batch_size = max_batch_size
    info = TensorInfo("INPUT0", "FP32", (4,), np.dtype(np.float32), 4, None)
    mv.inputs = {"INPUT0": info}
    mv.outputs = {"OUTPUT0": TensorInfo("OUTPUT0", "FP32", (4,), np.dtype(np.float32), 4, None)}
    return mv


@contextmanager
def scheduler(config_text: str, instances: list[FakeInstance], max_batch_size: int = 8) -> Iterator[Scheduler]:
    mv = make_model(config_text, max_batch_size)
    assert mv.plan is not None
    s = Scheduler(mv.plan, instances)  # type: ignore[arg-type]
    MODELS[id(s)] = mv
    s.start()
    try:
        yield s
    finally:
        for instance in instances:
            if instance.gate is not None:
                instance.gate.set()
        s.stop(10)
        MODELS.pop(id(s), None)


def request(s: Scheduler, value: float, sink: Collector, rows: int = 1, width: int = 4, **fields: Any) -> InferRequest:
    x = np.full((rows, width), value, dtype=np.float32)
    r = InferRequest(MODELS[id(s)], f"r{value}", {"INPUT0": x}, [RequestedOutput("OUTPUT0", 0)], rows,
                     (("INPUT0", (width,)),), time.monotonic_ns())
    for key, val in fields.items():
        setattr(r, key, val)
    r.sink = sink
    return r


def blocked(s: Scheduler, instance: FakeInstance, sink: Collector) -> None:
    """Occupy the instance with one request (value 100) until its gate opens."""
    s.submit(request(s, 100, sink))
    assert instance.started.wait(5)


def test_full_batch_forms_and_runs_once() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=4) as s:
        blocked(s, inst, sink)
        for i in range(6):
            s.submit(request(s, i, sink))
        gate.set()
        sink.wait_for(7)
    assert inst.batches == [[100], [0, 1, 2, 3], [4, 5]]


def test_delay_expiry_sends_a_partial_batch() -> None:
    inst = FakeInstance()
    sink = Collector()
    config = "dynamic_batching { max_queue_delay_microseconds: 150000 } " + NOT_ADAPTIVE
    with scheduler(config, [inst]) as s:
        start = time.monotonic()
        for i in range(3):
            s.submit(request(s, i, sink))
        sink.wait_for(3)
        elapsed = time.monotonic() - start
    assert inst.batches == [[0, 1, 2]]
    assert elapsed >= 0.15


def test_adaptive_delay_sends_once_arrivals_pause() -> None:
    """A closed loop of 4 clients: all 4 requests are in, nothing more will come before they are answered."""
    inst = FakeInstance()
    sink = Collector()
    with scheduler("dynamic_batching { max_queue_delay_microseconds: 500000 }", [inst]) as s:
        start = time.monotonic()
        for i in range(4):
            s.submit(request(s, i, sink))
        sink.wait_for(4)
        elapsed = time.monotonic() - start
    assert inst.batches == [[0, 1, 2, 3]]
    assert elapsed < 0.25, f"waited {elapsed:.3f} s for requests that could not come"


def test_preferred_size_is_sent_without_waiting_for_the_delay() -> None:
    inst = FakeInstance()
    sink = Collector()
    config = "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }"
    with scheduler(config, [inst]) as s:
        start = time.monotonic()
        for i in range(4):
            s.submit(request(s, i, sink))
        sink.wait_for(4)
        assert time.monotonic() - start < 4
    assert inst.batches == [[0, 1, 2, 3]]


def test_higher_priority_is_served_first() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    config = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    with scheduler(config, [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        for i in range(3):
            s.submit(request(s, i, sink))  # default level 2
        s.submit(request(s, 9, sink, priority=1))
        gate.set()
        sink.wait_for(5)
    assert inst.batches == [[100], [9], [0], [1], [2]]


def test_full_queue_rejects_at_once_and_the_rest_succeed() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    config = "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"
    with scheduler(config, [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        s.submit(request(s, 1, sink))
        s.submit(request(s, 2, sink))
        with pytest.raises(QueueFullError, match="queue is full"):
            s.submit(request(s, 3, sink))
        gate.set()
        done = sink.wait_for(3)
    assert all(r.error is None for r in done)
    assert inst.batches == [[100], [1], [2]]


def test_timed_out_request_is_rejected_and_never_computed() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    config = "dynamic_batching { default_queue_policy { default_timeout_microseconds: 50000 } }"
    with scheduler(config, [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        late = request(s, 1, sink)
        s.submit(late)
        time.sleep(0.15)
        gate.set()
        sink.wait_for(2)
    assert isinstance(late.error, DeadlineExceededError) and "not computed" in str(late.error)
    assert inst.batches == [[100]]
    assert s.statistics.fail.count == 1


def test_grpc_deadline_is_honoured_without_a_queue_policy() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        late = request(s, 1, sink)
        late.deadline_ns = time.monotonic_ns() + 30_000_000
        s.submit(late)
        time.sleep(0.1)
        gate.set()
        sink.wait_for(2)
    assert isinstance(late.error, DeadlineExceededError)
    assert inst.batches == [[100]]


def test_request_timeout_override_shortens_only_when_allowed() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    config = "dynamic_batching { default_queue_policy { allow_timeout_override: true } }"
    with scheduler(config, [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        late = request(s, 1, sink, timeout_us=20_000)
        patient = request(s, 2, sink)
        s.submit(late)
        s.submit(patient)
        time.sleep(0.1)
        gate.set()
        sink.wait_for(3)
    assert isinstance(late.error, DeadlineExceededError)
    assert patient.error is None and inst.batches == [[100], [2]]


def test_delay_action_serves_timed_out_requests_last() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    config = (
        "dynamic_batching { default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1 "
        "allow_timeout_override: true } }"
    )
    with scheduler(config, [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        s.submit(request(s, 1, sink))  # times out at once: delayed
        time.sleep(0.05)
        gate.set()
        done = sink.wait_for(2)
    assert all(r.error is None for r in done)
    assert inst.batches == [[100], [1]]


def test_cancelled_request_leaves_the_queue() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=1) as s:
        blocked(s, inst, sink)
        gone = request(s, 1, sink)
        s.submit(gone)
        s.submit(request(s, 2, sink))
        s.cancel(gone)
        gate.set()
        sink.wait_for(2)
        time.sleep(0.05)
        assert s.pending == 0
    assert inst.batches == [[100], [2]]


def test_engine_error_fails_exactly_that_batch() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=2) as s:
        blocked(s, inst, sink)
        bad = [request(s, -1, sink), request(s, 1, sink)]
        good = [request(s, 2, sink), request(s, 3, sink)]
        for r in (*bad, *good):
            s.submit(r)
        gate.set()
        sink.wait_for(5)
    assert all(isinstance(r.error, InternalError) for r in bad)
    assert all(r.error is None and r.outputs is not None for r in good)
    assert inst.batches == [[100], [-1, 1], [2, 3]]


def test_mixed_shapes_are_never_merged() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=8) as s:
        blocked(s, inst, sink)
        s.submit(request(s, 1, sink, width=4))
        s.submit(request(s, 2, sink, width=4))
        odd = request(s, 3, sink, width=6)
        odd.merge_key = (("INPUT0", (6,)),)
        s.submit(odd)
        s.submit(request(s, 4, sink, width=4))
        gate.set()
        sink.wait_for(5)
    assert inst.batches == [[100], [1, 2], [3], [4]]


def test_instances_overlap() -> None:
    instances = [FakeInstance(sleep=0.4), FakeInstance(sleep=0.4)]
    sink = Collector()
    with scheduler("", instances, max_batch_size=0) as s:
        start = time.monotonic()
        s.submit(request(s, 1, sink))
        s.submit(request(s, 2, sink))
        sink.wait_for(2)
        elapsed = time.monotonic() - start
    assert sorted(len(i.batches) for i in instances) == [1, 1]
    assert elapsed < 0.7, f"two 0.4 s batches on two instances took {elapsed:.2f} s"


def test_outputs_are_split_back_per_request_and_statistics_match() -> None:
    gate = threading.Event()
    inst = FakeInstance(gate)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=8) as s:
        blocked(s, inst, sink)
        rs = [request(s, i, sink, rows=i) for i in (1, 2, 3)]
        for r in rs:
            s.submit(r)
        gate.set()
        sink.wait_for(4)
        stats = s.statistics
        assert stats.success.count == 4 and stats.inference_count == 7 and stats.execution_count == 2
        assert sorted(stats.batches) == [1, 6]
    for r in rs:
        assert r.outputs is not None
        np.testing.assert_array_equal(r.outputs["OUTPUT0"], np.full((r.batch_size, 4), 2.0 * r.batch_size))


def test_preserve_ordering_returns_in_submission_order() -> None:
    gates = [threading.Event(), threading.Event()]
    instances = [FakeInstance(gates[0]), FakeInstance(gates[1])]
    sink = Collector()
    with scheduler("dynamic_batching { preserve_ordering: true }", instances, max_batch_size=1) as s:
        s.submit(request(s, 1, sink))
        assert instances[0].started.wait(0.5) or instances[1].started.wait(5)
        first = 0 if instances[0].started.is_set() else 1
        second = 1 - first
        s.submit(request(s, 2, sink))
        assert instances[second].started.wait(5)
        gates[second].set()  # the later request finishes first...
        time.sleep(0.1)
        assert sink.done == []  # ...but is held back
        gates[first].set()
        done = sink.wait_for(2)
    assert [r.id for r in done] == ["r1", "r2"]


def test_stop_drains_queued_requests() -> None:
    inst = FakeInstance(sleep=0.05)
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=1) as s:
        for i in range(5):
            s.submit(request(s, i, sink))
    assert len(sink.done) == 5 and all(r.error is None for r in sink.done)
    assert inst.closed


def _sequential_waits(config: str, count: int, delay_s: float) -> list[bool]:
    """Run `count` requests one after another (a lone client); which of them waited out the delay."""
    inst = FakeInstance()
    sink = Collector()
    waited = []
    with scheduler(config, [inst]) as s:
        for i in range(count):
            start = time.monotonic()
            s.submit(request(s, i, sink))
            sink.wait_for(i + 1)
            waited.append(time.monotonic() - start >= delay_s * 0.9)
    return waited


def test_adaptive_delay_stops_waiting_for_a_lone_client() -> None:
    waited = _sequential_waits("dynamic_batching { max_queue_delay_microseconds: 30000 }", 30, 0.03)
    assert waited[0], "the first request waits the delay (Triton's semantics)"
    assert sum(waited) <= 8, waited
    assert sum(waited[-10:]) <= 2, waited  # at most a probe now and then


def test_adaptive_delay_can_be_turned_off() -> None:
    config = (
        'dynamic_batching { max_queue_delay_microseconds: 20000 } '
        'parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }'
    )
    assert all(_sequential_waits(config, 6, 0.02))


def test_adaptive_delay_keeps_waiting_while_waits_grow_batches() -> None:
    inst = FakeInstance()
    sink = Collector()
    with scheduler("dynamic_batching { max_queue_delay_microseconds: 20000 }", [inst]) as s:
        for round_ in range(6):
            for i in range(3):
                s.submit(request(s, round_ * 10 + i, sink))
                time.sleep(0.002)
            sink.wait_for(3 * (round_ + 1))
    assert [len(b) for b in inst.batches] == [3] * 6


def _wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


class EchoInstance(FakeInstance):
    """Hands its input straight back, as an ONNX Identity graph may; each run waits for one `step()`."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = threading.Semaphore(0)

    def step(self) -> None:
        self.steps.release()

    def run(self, inputs: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        self.batches.append(inputs["INPUT0"][:, 0].tolist())
        assert self.steps.acquire(timeout=10)
        return {"OUTPUT0": inputs["INPUT0"]}


def test_reused_batch_buffers_never_leak_into_outputs() -> None:
    inst = EchoInstance()
    sink = Collector()
    with scheduler("dynamic_batching { }", [inst], max_batch_size=8) as s:
        s.submit(request(s, 0, sink))  # runs alone and holds the instance
        _wait_until(lambda: len(inst.batches) == 1)
        b = [request(s, v, sink) for v in (1, 2)]
        for r in b:
            s.submit(r)
        inst.step()
        sink.wait_for(1)
        _wait_until(lambda: len(inst.batches) == 2)
        c = [request(s, v, sink) for v in (3, 4)]  # queued while batch b runs in the buffer
        for r in c:
            s.submit(r)
        inst.step()
        sink.wait_for(3)
        inst.step()  # batch c reuses the buffer batch b ran in
        sink.wait_for(5)
    assert inst.batches == [[0], [1, 2], [3, 4]]
    for r, v in zip(b + c, (1, 2, 3, 4), strict=True):
        assert r.outputs is not None and float(r.outputs["OUTPUT0"][0, 0]) == v


def test_deadline_inside_the_queue_delay_is_answered_on_time() -> None:
    inst = FakeInstance()
    sink = Collector()
    config = (
        'dynamic_batching { max_queue_delay_microseconds: 2000000 } '
        'parameters { key: "adaptive_queue_delay" value: { string_value: "false" } }'
    )
    with scheduler(config, [inst]) as s:
        late = request(s, 1, sink)
        late.deadline_ns = time.monotonic_ns() + 50_000_000
        start = time.monotonic()
        s.submit(late)
        sink.wait_for(1)
        assert time.monotonic() - start < 1.0
    assert isinstance(late.error, DeadlineExceededError)
    assert inst.batches == []


def test_adaptive_delay_never_idles_a_saturated_engine() -> None:
    """An engine that runs most of the time is the bottleneck: what queued during its run goes at once.

    A steady stream (one request every 20 ms, so arrivals never pause) against an engine that takes
    longer per run than the stream needs to fill a batch keeps it saturated. Once runs get shorter and
    a run ends with a partial batch queued, the batch goes at once instead of waiting for a full one
    (which would idle the engine while its clients wait). Without the rule every batch would be full.
    """
    inst = FakeInstance(sleep=0.1)
    sink = Collector()
    stop = threading.Event()
    with scheduler("dynamic_batching { max_queue_delay_microseconds: 5000000 }", [inst], max_batch_size=4) as s:

        def feed() -> None:
            i = 0
            while not stop.is_set():
                s.submit(request(s, i, sink))
                i += 1
                time.sleep(0.02)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            time.sleep(1.2)  # full batches, back to back: the engine is busy ~all the time
            inst.sleep = 0.05  # now 2-3 requests arrive per run
            first_short = len(inst.batches)
            time.sleep(1.2)
        finally:
            stop.set()
            feeder.join()
    short = [len(b) for b in inst.batches[first_short + 1:-1]]
    assert len(short) >= 5, inst.batches
    assert sum(n < 4 for n in short) >= len(short) // 2, f"batches kept waiting for a full batch: {short}"

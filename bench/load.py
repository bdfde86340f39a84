"""The load generator of one process: grpc.aio, many calls in flight, as little Python per request as we can.

Requests are serialized once (``inputs.build_requests``) and sent as bytes through the generated stub's
method path with no serializer; responses are not parsed (a stream's are only checked for an error
message). Per request the hot path does a call, two ``perf_counter_ns`` and a list append; latencies are
folded into the histogram once per window, by ``cut()``.

Closed loop: `concurrency` workers, each sends its next request as soon as its last one answered.
Open loop: requests are due at a constant or Poisson schedule; up to `max_inflight` workers take the
next due time, sleep until it, send, and their latency counts from the due time, so a server that
answers slowly shows its queueing instead of slowing the schedule down. A send that leaves more than
`late_ns` after its due time is *late*; one whose due time is older than the request timeout is
*dropped* (it could only time out). Streaming: each worker owns a ModelStreamInfer call and keeps one
request on it at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .window import ErrorCount, WindowSample

__all__ = ["LoadGenerator", "LoadSpec", "channel_count", "resolve_engine"]

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
_MAX_MESSAGE = 2**31 - 1
_STREAM_ERROR_TAG = b"\n"  # ModelStreamInferResponse field 1 (error_message), length-delimited


def resolve_engine(engine: str, concurrency: int, open_loop: bool, streaming: bool) -> str:
    """`auto`: blocking calls in a thread at concurrency 1 (no hop from gRPC's poller thread to the event
    loop, so about 0.1 ms less client latency per request), grpc.aio everywhere else (threads contend for the
    GIL as soon as there are several)."""
    if engine != "auto":
        return engine
    return "thread" if concurrency == 1 and not open_loop and not streaming else "aio"


def channel_count(slots: int, requested: int = 0) -> int:
    """Connections for `slots` concurrent calls: like perf_analyzer, one per 6 (at most 16) unless given."""
    if requested > 0:
        return requested
    return max(1, min(16, -(-slots // 6)))


@dataclass(frozen=True)
class LoadSpec:
    """One generator's share of a load level; plain data so a worker process can receive it."""

    url: str
    requests: tuple[tuple[bytes, int], ...]
    concurrency: int = 0
    request_rate: float = 0.0
    poisson: bool = False
    max_inflight: int = 256
    streaming: bool = False
    timeout_s: float | None = None
    channels: int = 0
    late_ns: int = 2_000_000
    seed: int = 0
    phase: float = 0.0
    engine: str = "aio"

    @property
    def threaded(self) -> bool:
        """Blocking calls in threads: only for closed-loop unary load (see `resolve_engine`)."""
        return self.engine == "thread" and not self.open_loop and not self.streaming

    @property
    def open_loop(self) -> bool:
        return self.request_rate > 0

    @property
    def slots(self) -> int:
        return self.max_inflight if self.open_loop else self.concurrency


class _Schedule:
    """Due times (perf_counter_ns) of an open-loop level: constant spacing or exponential gaps."""

    def __init__(self, rate: float, poisson: bool, seed: int, phase: float) -> None:
        self._period = 1e9 / rate
        self._poisson = poisson
        self._rng = np.random.default_rng(seed)
        self._next = float(time.perf_counter_ns()) + 5e6 + phase * self._period
        self._gaps: list[float] = []

    def take(self) -> int:
        due = self._next
        if self._poisson:
            if not self._gaps:
                self._gaps = self._rng.exponential(self._period, 4096).tolist()
            self._next += self._gaps.pop()
        else:
            self._next += self._period
        return int(due)


class LoadGenerator:
    """Drives one load level from this process; `cut()` hands over what finished since the last cut."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.inflight = 0
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []
        self._schedule: _Schedule | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sync_channels: list[grpc.Channel] = []
        self._reset(time.perf_counter_ns())

    def _reset(self, now: int) -> None:
        self._latencies: list[int] = []
        self._rows = 0
        self._errors: dict[str, ErrorCount] = {}
        self._sent = self._late = self._dropped = 0
        self._lag_sum = self._lag_max = 0
        self._window_start = now
        self._cpu_start = time.process_time()
        self._loop_cpu_start = time.thread_time()

    async def start(self, connect_timeout_s: float = 30.0) -> None:
        """Open the channels, wait until they connect, start the workers."""
        spec = self.spec
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE),
                   ("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel, not one shared
        if spec.threaded:
            await self._start_threads(options, connect_timeout_s)
            return
        self._channels = [grpc.aio.insecure_channel(spec.url, options=options)
                          for _ in range(channel_count(spec.slots, spec.channels))]
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), connect_timeout_s) for c in self._channels))
        if spec.open_loop:
            self._schedule = _Schedule(spec.request_rate, spec.poisson, spec.seed, spec.phase)
        self._running = True
        self._reset(time.perf_counter_ns())
        worker = self._stream_worker if spec.streaming else self._unary_worker
        self._tasks = [asyncio.create_task(worker(slot)) for slot in range(spec.slots)]

    async def _start_threads(self, options: list[tuple[str, int]], connect_timeout_s: float) -> None:
        spec = self.spec
        self._sync_channels = [grpc.insecure_channel(spec.url, options=options)
                               for _ in range(channel_count(spec.slots, spec.channels))]
        loop = asyncio.get_running_loop()
        for channel in self._sync_channels:
            await loop.run_in_executor(None, grpc.channel_ready_future(channel).result, connect_timeout_s)
        self._running = True
        self._reset(time.perf_counter_ns())
        self._threads = [threading.Thread(target=self._thread_worker, args=(slot,), daemon=True, name="bench-load")
                         for slot in range(spec.slots)]
        for thread in self._threads:
            thread.start()

    def cut(self) -> WindowSample:
        """Close the current window and start the next (call from the event-loop thread)."""
        with self._lock:
            return self._cut()

    def _cut(self) -> WindowSample:
        now = time.perf_counter_ns()
        cpu, loop_cpu = time.process_time(), time.thread_time()
        wall = (now - self._window_start) / 1e9
        sample = WindowSample(
            wall_s=wall, requests=len(self._latencies), inferences=self._rows, errors=self._errors,
            sent=self._sent, late=self._late, dropped=self._dropped, send_lag_ns_sum=self._lag_sum,
            send_lag_ns_max=self._lag_max,
            process_cpu=[(cpu - self._cpu_start) / wall if wall > 0 else 0.0],
            loop_cpu=[(loop_cpu - self._loop_cpu_start) / wall if wall > 0 else 0.0],
        )
        latencies = self._latencies
        self._reset(now)
        sample.histogram.record_many(np.asarray(latencies, dtype=np.int64))
        return sample

    async def stop(self, drain_s: float = 5.0) -> None:
        """Let calls in flight finish (up to `drain_s`), then cancel the workers and close the channels."""
        self._running = False
        deadline = time.monotonic() + drain_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
        loop = asyncio.get_running_loop()
        for thread in self._threads:  # each finishes the call it is in
            await loop.run_in_executor(None, thread.join, drain_s)
        for channel in self._sync_channels:
            channel.close()  # a call still running after drain_s ends with CANCELLED
        self._tasks, self._channels, self._sync_channels, self._threads = [], [], [], []

    # ---- workers --------------------------------------------------------------------------

    def _fail(self, code: str, message: str) -> None:
        entry = self._errors.get(code)
        if entry is None:
            self._errors[code] = ErrorCount(1, message)
        else:
            entry.count += 1

    async def _due(self) -> int | None:
        """Open loop: wait for this worker's next due time; None when the send is dropped."""
        assert self._schedule is not None
        due = self._schedule.take()
        delay = due - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        lag = time.perf_counter_ns() - due
        if lag > self.spec.late_ns:
            self._late += 1
        if lag > 0:
            self._lag_sum += lag
            self._lag_max = max(self._lag_max, lag)
        timeout = self.spec.timeout_s
        if timeout is not None and lag > timeout * 1e9:
            self._dropped += 1
            return None
        return due

    async def _unary_worker(self, slot: int) -> None:
        spec = self.spec
        call: Any = self._channels[slot % len(self._channels)].unary_unary(_INFER)
        requests, n, i = spec.requests, len(spec.requests), slot
        timeout, open_loop = spec.timeout_s, spec.open_loop
        now = time.perf_counter_ns
        while self._running:
            payload, rows = requests[i % n]
            i += 1
            if open_loop:
                due = await self._due()
                if due is None or not self._running:
                    continue
                start = due
            else:
                start = now()
            self._sent += 1
            self.inflight += 1
            try:
                await call(payload, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                self._fail(exc.code().name, exc.details() or "")
                continue
            finally:
                self.inflight -= 1
            self._latencies.append(now() - start)
            self._rows += rows

    def _thread_worker(self, slot: int) -> None:
        """Closed loop with blocking calls: the calling thread polls gRPC's queue itself."""
        spec = self.spec
        call: Any = self._sync_channels[slot % len(self._sync_channels)].unary_unary(_INFER)
        requests, n, i = spec.requests, len(spec.requests), slot
        timeout, lock = spec.timeout_s, self._lock
        now = time.perf_counter_ns
        while self._running:
            payload, rows = requests[i % n]
            i += 1
            start = now()
            try:
                call(payload, timeout=timeout)
            except grpc.RpcError as exc:
                if not self._running:
                    return
                with lock:
                    self._sent += 1
                    self._fail(exc.code().name, exc.details() or "")
                continue
            end = now()
            with lock:
                self._sent += 1
                self._latencies.append(end - start)
                self._rows += rows

    async def _stream_worker(self, slot: int) -> None:
        spec = self.spec
        method: Any = self._channels[slot % len(self._channels)].stream_stream(_STREAM)
        requests, n, i = spec.requests, len(spec.requests), slot
        timeout, open_loop = spec.timeout_s, spec.open_loop
        now = time.perf_counter_ns
        stream: Any = None
        while self._running:
            if stream is None:
                stream = method()
            payload, rows = requests[i % n]
            i += 1
            if open_loop:
                due = await self._due()
                if due is None or not self._running:
                    continue
                start = due
            else:
                start = now()
            self._sent += 1
            self.inflight += 1
            try:
                await stream.write(payload)
                raw = await (asyncio.wait_for(stream.read(), timeout) if timeout else stream.read())
            except asyncio.TimeoutError:
                self._fail("DEADLINE_EXCEEDED", f"no stream response within {timeout} s")
                stream.cancel()
                stream = None
                continue
            except grpc.aio.AioRpcError as exc:
                self._fail(exc.code().name, exc.details() or "")
                stream = None
                continue
            finally:
                self.inflight -= 1
            if raw is grpc.aio.EOF:
                code = await stream.code()
                self._fail(code.name, (await stream.details()) or "stream closed by the server")
                stream = None
                continue
            if raw[:1] == _STREAM_ERROR_TAG:
                message = pb.ModelStreamInferResponse.FromString(raw).error_message
                if message:
                    self._fail("STREAM_ERROR", message)
                    continue
            self._latencies.append(now() - start)
            self._rows += rows
        if stream is not None:
            stream.cancel()

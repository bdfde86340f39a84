"""Cumulative per-model statistics, Triton's statistics extension semantics.

success/fail/queue/compute_* are counted per request, in nanoseconds; each
request of a batch is charged the batch's compute durations (as Triton does,
so cumulative ns / count is the mean duration a request saw). inference_count
counts batch rows, execution_count engine runs, batch_stats one entry per
executed batch size. Workers record under one short lock per batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tensorgate.clients.pb import grpc_service_pb2 as pb

__all__ = ["Counted", "Duration", "ModelStatistics"]


class Counted(Protocol):
    """What the statistics read of a request (request.InferRequest)."""

    @property
    def arrival_ns(self) -> int: ...

    @property
    def batch_size(self) -> int: ...


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, count: int, ns: int) -> None:
        self.count += count
        self.ns += ns

    def to_pb(self, out: pb.StatisticDuration) -> None:
        out.count = self.count
        out.ns = self.ns


@dataclass
class _BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStatistics:
    """Counters for one model version; safe to update from several worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.cache_hit = Duration()  # response cache: lookup + copy out, per hit
        self.cache_miss = Duration()  # response cache: lookup + insertion, per miss
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, _BatchSizeStats] = {}
        # fail.count by Triton's metric reasons (the metrics endpoint's nv_inference_request_failure)
        self.failure_reasons = {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}
        self.queue_full = 0  # of the REJECTED: refused at once because the queue was at max_queue_size

    def record_batch(
        self, batch: Sequence[Counted], start: int, input_end: int, output_start: int, end: int
    ) -> None:
        """One executed batch whose requests all succeeded."""
        n = len(batch)
        rows = sum(r.batch_size for r in batch)
        queue_ns = sum(start - r.arrival_ns for r in batch)
        request_ns = sum(end - r.arrival_ns for r in batch)
        c_in, c_infer, c_out = input_end - start, output_start - input_end, end - output_start
        wall_ms = time.time_ns() // 1_000_000  # last_inference is wall-clock by definition
        with self._lock:
            self.success.add(n, request_ns)
            self.queue.add(n, queue_ns)
            self.compute_input.add(n, c_in * n)
            self.compute_infer.add(n, c_infer * n)
            self.compute_output.add(n, c_out * n)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = wall_ms
            per_size = self.batches.get(rows)
            if per_size is None:
                per_size = self.batches[rows] = _BatchSizeStats()
            per_size.compute_input.add(1, c_in)
            per_size.compute_infer.add(1, c_infer)
            per_size.compute_output.add(1, c_out)

    def record_cache_hit(self, request: Counted, lookup_ns: int, end: int) -> None:
        """A request answered from the response cache: a success and a queue entry, no compute (Triton)."""
        wall_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.success.add(1, end - request.arrival_ns)
            self.queue.add(1, 0)
            self.cache_hit.add(1, lookup_ns)
            self.last_inference_ms = wall_ms

    def record_cache_miss(self, ns: int) -> None:
        with self._lock:
            self.cache_miss.add(1, ns)

    def record_ensemble(self, request: Counted, queue_ns: int, compute: Sequence[int], end: int) -> None:
        """An ensemble request whose steps all succeeded: its steps' queue and compute times summed."""
        wall_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.success.add(1, end - request.arrival_ns)
            self.queue.add(1, queue_ns)
            self.compute_input.add(1, compute[0])
            self.compute_infer.add(1, compute[1])
            self.compute_output.add(1, compute[2])
            self.inference_count += request.batch_size
            self.execution_count += 1
            self.last_inference_ms = wall_ms

    def record_failures(self, requests: Sequence[Counted], end: int, reason: str = "OTHER") -> None:
        """Requests that failed in the scheduler; reason: REJECTED, CANCELED, BACKEND or OTHER."""
        with self._lock:
            self.fail.add(len(requests), sum(end - r.arrival_ns for r in requests))
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + len(requests)

    def record_queue_full(self, request: Counted, end: int) -> None:
        """A request refused because its queue was full (a REJECTED failure, also counted on its own)."""
        with self._lock:
            self.fail.add(1, end - request.arrival_ns)
            self.failure_reasons["REJECTED"] += 1
            self.queue_full += 1

    def to_pb(self, name: str, version: str) -> pb.ModelStatistics:
        out = pb.ModelStatistics(name=name, version=version)
        with self._lock:
            out.last_inference = self.last_inference_ms
            out.inference_count = self.inference_count
            out.execution_count = self.execution_count
            stats = out.inference_stats
            self.success.to_pb(stats.success)
            self.fail.to_pb(stats.fail)
            self.queue.to_pb(stats.queue)
            self.compute_input.to_pb(stats.compute_input)
            self.compute_infer.to_pb(stats.compute_infer)
            self.compute_output.to_pb(stats.compute_output)
            self.cache_hit.to_pb(stats.cache_hit)
            self.cache_miss.to_pb(stats.cache_miss)
            for size in sorted(self.batches):
                entry = self.batches[size]
                item = out.batch_stats.add(batch_size=size)
                entry.compute_input.to_pb(item.compute_input)
                entry.compute_infer.to_pb(item.compute_infer)
                entry.compute_output.to_pb(item.compute_output)
        return out

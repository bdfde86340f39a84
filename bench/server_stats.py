"""Server-side time breakdown from the statistics extension, diffed per window as perf_analyzer does.

ModelStatistics counters are cumulative (spec/protocol.md 1.6), so bench samples them at every window
cut and reports the difference: per successful request the queue, compute input, compute infer and
compute output time, and the mean executed batch (inference_count / execution_count). Only asked when the
server lists ``statistics`` in its ServerMetadata extensions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tensorgate.clients import AsyncInferenceClient, InferenceServerError
from tensorgate.clients.pb import grpc_service_pb2 as pb

__all__ = ["ServerStats", "StatsDelta"]


@dataclass
class StatsDelta:
    """Counter differences over a span of time (raw, so spans add up before dividing)."""

    success: int = 0
    fail: int = 0
    inference_count: int = 0
    execution_count: int = 0
    request_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0

    def __add__(self, other: StatsDelta) -> StatsDelta:
        return StatsDelta(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: StatsDelta) -> StatsDelta:
        return StatsDelta(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def summary(self) -> dict[str, float]:
        """Microseconds per successful request, and the mean executed batch size."""
        n = self.success or 1
        return {
            "server_requests": float(self.success),
            "server_failures": float(self.fail),
            "server_request_us": self.request_ns / n / 1e3,
            "queue_us": self.queue_ns / n / 1e3,
            "compute_input_us": self.compute_input_ns / n / 1e3,
            "compute_infer_us": self.compute_infer_ns / n / 1e3,
            "compute_output_us": self.compute_output_ns / n / 1e3,
            "mean_batch": self.inference_count / self.execution_count if self.execution_count else 0.0,
            "inference_count": float(self.inference_count),
            "execution_count": float(self.execution_count),
        }


def _totals(response: pb.ModelStatisticsResponse) -> StatsDelta:
    """All versions of the model added up (a sweep may hit several when no version is named)."""
    out = StatsDelta()
    for m in response.model_stats:
        s = m.inference_stats
        out += StatsDelta(
            success=s.success.count, fail=s.fail.count, inference_count=m.inference_count,
            execution_count=m.execution_count, request_ns=s.success.ns, queue_ns=s.queue.ns,
            compute_input_ns=s.compute_input.ns, compute_infer_ns=s.compute_infer.ns,
            compute_output_ns=s.compute_output.ns,
        )
    return out


class ServerStats:
    """Samples one model's cumulative statistics; `delta()` returns the change since the last call."""

    def __init__(self, client: AsyncInferenceClient, model: str, version: str = "") -> None:
        self._client = client
        self._model = model
        self._version = version
        self._last: StatsDelta | None = None
        self.error = ""

    async def _sample(self) -> StatsDelta | None:
        try:
            response = await self._client.get_inference_statistics(self._model, self._version, client_timeout=10)
        except InferenceServerError as exc:
            self.error = str(exc)
            return None
        return _totals(response)

    async def reset(self) -> None:
        """Start a new span here (after warm-up, between levels)."""
        self._last = await self._sample()

    async def delta(self) -> StatsDelta | None:
        """Counters since the last reset or delta; None when statistics could not be read."""
        current = await self._sample()
        if current is None or self._last is None:
            self._last = current
            return None
        out = current - self._last
        self._last = current
        return out

"""What one load generator saw in one measurement window, and how windows and processes add up.

A `WindowSample` is plain picklable data, so worker processes send theirs to the parent, which adds the
samples of one window across processes (`combine`) and the stable windows of one level (`merge_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .histogram import LatencyHistogram

__all__ = ["ErrorCount", "WindowSample", "combine", "merge_windows"]


@dataclass
class ErrorCount:
    """Failures of one status code, with the first message seen (the rest are usually the same)."""

    count: int = 0
    first_message: str = ""


@dataclass
class WindowSample:
    """Completions whose end fell in the window, counted by one or more generators.

    ``wall_s`` is the window's length; ``processes`` counts how many generators were added up, and the CPU
    lists hold one entry per generator process (cores used: CPU seconds / wall seconds).
    """

    wall_s: float = 0.0
    requests: int = 0
    inferences: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    errors: dict[str, ErrorCount] = field(default_factory=dict)
    sent: int = 0
    late: int = 0
    dropped: int = 0
    send_lag_ns_sum: int = 0
    send_lag_ns_max: int = 0
    process_cpu: list[float] = field(default_factory=list)
    loop_cpu: list[float] = field(default_factory=list)
    processes: int = 1

    @property
    def error_count(self) -> int:
        return sum(e.count for e in self.errors.values())

    @property
    def req_per_sec(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def infer_per_sec(self) -> float:
        return self.inferences / self.wall_s if self.wall_s > 0 else 0.0

    def add_error(self, code: str, message: str, count: int = 1) -> None:
        entry = self.errors.get(code)
        if entry is None:
            self.errors[code] = ErrorCount(count, message)
        else:
            entry.count += count


def _add_errors(into: dict[str, ErrorCount], errors: dict[str, ErrorCount]) -> None:
    for code, e in errors.items():
        mine = into.setdefault(code, ErrorCount(0, e.first_message))
        mine.count += e.count


def _add_counts(out: WindowSample, s: WindowSample) -> None:
    """Add one window's counts, latencies and errors into ``out`` (CPU figures are merged by the caller)."""
    out.requests += s.requests
    out.inferences += s.inferences
    out.histogram.merge(s.histogram)
    _add_errors(out.errors, s.errors)
    out.sent += s.sent
    out.late += s.late
    out.dropped += s.dropped
    out.send_lag_ns_sum += s.send_lag_ns_sum
    out.send_lag_ns_max = max(out.send_lag_ns_max, s.send_lag_ns_max)


def combine(samples: Sequence[WindowSample]) -> WindowSample:
    """The same window seen by several generator processes: counts add, the wall time is their mean."""
    out = WindowSample(processes=len(samples))
    if not samples:
        return out
    out.wall_s = sum(s.wall_s for s in samples) / len(samples)
    for s in samples:
        _add_counts(out, s)
        out.process_cpu.extend(s.process_cpu)
        out.loop_cpu.extend(s.loop_cpu)
    return out


def merge_windows(windows: Sequence[WindowSample]) -> WindowSample:
    """Consecutive windows as one long window: counts and wall times add; CPU is wall-weighted per process."""
    out = WindowSample(processes=windows[0].processes if windows else 1)
    total_wall = sum(w.wall_s for w in windows)
    for w in windows:
        out.wall_s += w.wall_s
        _add_counts(out, w)
    if windows and total_wall > 0:
        width = min(len(w.process_cpu) for w in windows)
        out.process_cpu = [sum(w.process_cpu[i] * w.wall_s for w in windows) / total_wall for i in range(width)]
        width = min(len(w.loop_cpu) for w in windows)
        out.loop_cpu = [sum(w.loop_cpu[i] * w.wall_s for w in windows) / total_wall for i in range(width)]
    return out

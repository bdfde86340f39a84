"""perf_analyzer's stability rule, so a bench figure means what a perf_analyzer figure means.

perf_analyzer (inference_profiler.cc, DetermineStability) calls a measurement stable when, over the last
`stability_window` (3) windows, no window has zero throughput, max/min throughput <= 1 + threshold and
max/min latency <= 1 + threshold. Its latency is the average, or the chosen percentile; bench uses p99.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["STABILITY_WINDOWS", "is_stable", "spread"]

STABILITY_WINDOWS = 3


def spread(values: Sequence[float]) -> float:
    """max/min - 1 (infinite when the minimum is zero)."""
    low, high = min(values), max(values)
    if low <= 0:
        return 0.0 if high <= 0 else float("inf")
    return high / low - 1


def is_stable(throughputs: Sequence[float], latencies: Sequence[float], threshold: float,
              windows: int = STABILITY_WINDOWS) -> bool:
    """Whether the last `windows` measurements agree within `threshold` (0.1 = 10 %).

    Args:
        throughputs: per-window throughput, oldest first.
        latencies: per-window latency (p99), oldest first, same length.
        threshold: allowed max/min - 1 for both series.
        windows: how many trailing windows must agree.
    """
    if len(throughputs) < windows or len(latencies) < windows:
        return False
    tp, lat = throughputs[-windows:], latencies[-windows:]
    if any(t <= 0 for t in tp):
        return False
    return spread(tp) <= threshold and spread(lat) <= threshold

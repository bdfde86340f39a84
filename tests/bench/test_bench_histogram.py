"""The latency histogram and the stability rule, on synthetic latencies."""

from __future__ import annotations

import numpy as np
import pytest

from tensorgate.bench.histogram import LatencyHistogram
from tensorgate.bench.stability import is_stable, spread
from tensorgate.bench.window import ErrorCount, WindowSample, combine, merge_windows


def _latencies(n: int = 200_000, seed: int = 1) -> np.ndarray:
    """Log-normal around 2 ms with a long tail, in nanoseconds: what a loaded server looks like."""
    rng = np.random.default_rng(seed)
    return (rng.lognormal(mean=np.log(2e6), sigma=0.6, size=n)).astype(np.int64)


@pytest.mark.parametrize("percent", [50, 90, 95, 99, 99.9])
def test_percentiles_within_one_percent_of_exact(percent: float) -> None:
    values = _latencies()
    h = LatencyHistogram()
    h.record_many(values)
    exact = np.percentile(values, percent, method="inverted_cdf")
    assert h.percentile_ns(percent) == pytest.approx(exact, rel=0.01)


def test_min_max_mean_are_exact_and_small_values_exact() -> None:
    values = _latencies(10_000)
    h = LatencyHistogram()
    h.record_many(values)
    assert (h.min_ns, h.max_ns, h.total) == (values.min(), values.max(), values.size)
    assert h.mean_ns == pytest.approx(values.mean())
    assert h.percentile_ns(100) == values.max()
    small = LatencyHistogram()
    small.record_many([3, 7, 7, 200])
    assert small.percentile_ns(50) == 7
    assert small.percentile_ns(100) == 200


def test_merge_equals_recording_everything_and_roundtrips() -> None:
    values = _latencies(50_000)
    whole, a, b = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    whole.record_many(values)
    a.record_many(values[:20_000])
    b.record_many(values[20_000:])
    merged = LatencyHistogram.merged([a, b, LatencyHistogram()])
    assert np.array_equal(merged.counts, whole.counts)
    assert (merged.min_ns, merged.max_ns, merged.sum_ns) == (whole.min_ns, whole.max_ns, whole.sum_ns)
    back = LatencyHistogram.from_dict(whole.to_dict())
    assert np.array_equal(back.counts, whole.counts)
    assert back.percentile_ns(99) == whole.percentile_ns(99)


def test_empty_histogram() -> None:
    h = LatencyHistogram()
    h.record_many([])
    assert h.percentile_ns(99) == 0.0
    assert h.summary_ms()["p50_ms"] == 0.0


def test_stability_rule_like_perf_analyzer() -> None:
    assert is_stable([100, 105, 108], [10, 10.5, 10.9], 0.10)
    assert not is_stable([100, 105], [10, 10], 0.10)  # fewer than three windows
    assert not is_stable([100, 105, 115], [10, 10, 10], 0.10)  # throughput spread 15 %
    assert not is_stable([100, 100, 100], [10, 10, 11.5], 0.10)  # p99 spread 15 %
    assert not is_stable([0, 0, 0], [0, 0, 0], 1.0)  # zero throughput is never stable
    assert is_stable([50, 300, 100, 102, 104], [99, 1, 5, 5, 5], 0.05)  # only the last three count
    assert spread([2, 4]) == 1.0


def test_windows_add_up_across_processes_and_time() -> None:
    def sample(requests: int, wall: float, cpu: float) -> WindowSample:
        s = WindowSample(wall_s=wall, requests=requests, inferences=2 * requests, process_cpu=[cpu], loop_cpu=[cpu])
        s.histogram.record_many(np.full(requests, 1_000_000))
        s.errors["UNAVAILABLE"] = ErrorCount(1, "first")
        return s

    both = combine([sample(100, 1.0, 0.5), sample(300, 1.0, 0.25)])
    assert (both.requests, both.inferences, both.processes) == (400, 800, 2)
    assert both.req_per_sec == 400 and both.infer_per_sec == 800
    assert both.errors["UNAVAILABLE"].count == 2 and both.errors["UNAVAILABLE"].first_message == "first"
    assert both.process_cpu == [0.5, 0.25]
    long = merge_windows([sample(100, 1.0, 0.2), sample(300, 3.0, 0.6)])
    assert long.req_per_sec == 100
    assert long.process_cpu == [pytest.approx(0.5)]
    assert long.histogram.total == 400

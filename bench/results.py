"""The JSON shape of a run: a window, a level (its stable windows merged), ratios to the ceilings.

A level object carries at least ``concurrency`` or ``request_rate``, ``throughput_infer_per_sec``,
``throughput_req_per_sec``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``errors`` (a count; ``errors_by_code``
has each code's count and first message) and ``windows`` (every measurement window, warm-up excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .server_stats import StatsDelta
from .stability import STABILITY_WINDOWS
from .window import WindowSample, merge_windows

__all__ = ["CLIENT_SATURATED", "MACHINE_SATURATED", "level_dict", "window_dict"]

#: a client process (or its event-loop thread) busier than this, in cores, is close to limiting the load
CLIENT_SATURATED = 0.85
#: all cores busier than this: the machine, not the server, may be the limit
MACHINE_SATURATED = 0.95


def _figures(sample: WindowSample) -> dict[str, Any]:
    attempts = sample.requests + sample.error_count + sample.dropped
    out: dict[str, Any] = {
        "duration_s": round(sample.wall_s, 4),
        "requests": sample.requests,
        "inferences": sample.inferences,
        "throughput_req_per_sec": sample.req_per_sec,
        "throughput_infer_per_sec": sample.infer_per_sec,
        **sample.histogram.summary_ms(),
        "errors": sample.error_count,
        "errors_by_code": {code: {"count": e.count, "first_message": e.first_message}
                           for code, e in sorted(sample.errors.items())},
        "error_rate": (sample.error_count + sample.dropped) / attempts if attempts else 0.0,
        "sent": sample.sent,
        "late": sample.late,
        "dropped": sample.dropped,
        "send_lag_mean_ms": sample.send_lag_ns_sum / sample.sent / 1e6 if sample.sent else 0.0,
        "send_lag_max_ms": sample.send_lag_ns_max / 1e6,
        "client_processes": sample.processes,
        "client_cpu_cores": sum(sample.process_cpu),
        "client_cpu_per_process": [round(c, 3) for c in sample.process_cpu],
        "client_loop_cpu_per_process": [round(c, 3) for c in sample.loop_cpu],
        "client_saturated": any(c >= CLIENT_SATURATED for c in [*sample.loop_cpu, *sample.process_cpu]),
    }
    return out


def window_dict(index: int, sample: WindowSample, machine_busy: float | None,
                server: StatsDelta | None) -> dict[str, Any]:
    """One window as reported (``server`` is the statistics breakdown when the server has one)."""
    out = {"index": index, **_figures(sample)}
    out["machine_cpu_busy"] = machine_busy
    out["server"] = server.summary() if server is not None else None
    return out


def level_dict(level: dict[str, Any], samples: Sequence[WindowSample], windows: Sequence[dict[str, Any]],
               deltas: Sequence[StatsDelta | None], stable: bool) -> dict[str, Any]:
    """A level: its last STABILITY_WINDOWS windows merged (perf_analyzer reports the same span)."""
    tail = slice(-STABILITY_WINDOWS, None)
    merged = merge_windows(samples[tail])
    out: dict[str, Any] = {**level, **_figures(merged), "stable": stable, "windows_measured": len(windows)}
    busy = [w["machine_cpu_busy"] for w in windows[tail] if w["machine_cpu_busy"] is not None]
    out["machine_cpu_busy"] = sum(busy) / len(busy) if busy else None
    out["machine_saturated"] = bool(busy) and out["machine_cpu_busy"] >= MACHINE_SATURATED
    known = [d for d in deltas[tail] if d is not None]
    out["server"] = sum(known, StatsDelta()).summary() if known else None
    everything = merge_windows(samples)
    attempts = everything.requests + everything.error_count + everything.dropped
    out["error_rate_all_windows"] = (everything.error_count + everything.dropped) / attempts if attempts else 0.0
    out["windows"] = list(windows)
    return out

"""A PNG of a run: throughput, and p50/p99 latency, against concurrency or request rate.

matplotlib is optional (``pip install tensorgate[plot]``); it is imported only here, with the Agg
backend, so a headless machine can draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import level_key

__all__ = ["PlotUnavailable", "check_plot_available", "plot_report"]

_MISSING = "--plot needs matplotlib: pip install 'tensorgate[plot]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def check_plot_available() -> None:
    """Say that matplotlib is missing before a run, not after it.

    Raises:
        PlotUnavailable: matplotlib cannot be imported.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(_MISSING) from exc


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Two panels sharing the x axis (concurrency or request rate).

    Raises:
        PlotUnavailable: matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(_MISSING) from exc
    results = report["results"]
    key = level_key(results[0])[0] if results else "concurrency"
    xs = [r[key] for r in results]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 7))
    top.plot(xs, [r["throughput_infer_per_sec"] for r in results], "o-", label="server")
    for echo, name in (("echo_aio", "echo grpc.aio"), ("echo_thread", "echo thread pool")):
        values = [((r.get("ceilings") or {}).get(echo) or {}).get("throughput_infer_per_sec") for r in results]
        if any(v is not None for v in values):
            top.plot(xs, [v or 0 for v in values], "s--", label=name)
    top.set_ylabel("inferences / s")
    top.set_ylim(bottom=0)
    top.legend()
    top.grid(True, alpha=0.3)
    bottom.plot(xs, [r["p50_ms"] for r in results], "o-", label="p50")
    bottom.plot(xs, [r["p99_ms"] for r in results], "o-", label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("request rate (/s)" if key == "request_rate" else "concurrency")
    bottom.set_ylim(bottom=0)
    bottom.legend()
    bottom.grid(True, alpha=0.3)
    fig.suptitle(f"{report['model']} @ {report['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

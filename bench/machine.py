"""How busy the whole machine is: the limit a load tester must see beside the client's own CPU."""

from __future__ import annotations

import os

__all__ = ["MachineCpu"]


def _times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of all cores since boot; None where neither psutil nor /proc is there."""
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/stat") as f:
                values = [float(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        return sum(values) - idle, sum(values)
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


class MachineCpu:
    """Busy fraction of all cores between calls to `busy()` (0..1)."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._last = _times()

    def reset(self) -> None:
        self._last = _times()

    def busy(self) -> float | None:
        now = _times()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return (now[0] - last[0]) / (now[1] - last[1])

"""Log lines that clients can cause at request rate, summarised: the first of each kind, then a count.

A flood of the same failure (an unexpected exception on every request, every
request refused by a full queue) must not grow the log at request rate nor bury
everything else. ``LogSummary.record`` logs the first occurrence of a kind in
full (with its traceback when there is one) and opens a window; occurrences
inside the window are only counted; when it closes a timer logs one line with
the count, so a kind writes at most one line per interval. A quiet window ends
the kind's summary, and its next occurrence is logged in full again.

Kinds must come from a bounded set (code locations, exception types, model
names the server knows), never from raw client strings.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "LogSummary"]

DEFAULT_INTERVAL = 10.0
_MAX_KINDS = 1024  # a guard: kinds are bounded by construction, this keeps a bug from growing memory


@dataclass
class _Window:
    summary: str
    level: int
    count: int = 0
    timer: threading.Timer | None = field(default=None, repr=False)


class LogSummary:
    """Per-kind rate limiting with counts, for one logger."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> None:
        self._log = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def record(self, kind: str, level: int, message: str, *args: Any, summary: str = "",
               exc_info: BaseException | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Log `message % args` if `kind` is not in a window, else count it; True when logged.

        Args:
            kind: what is being counted (bounded set).
            level: the logging level of both the full line and the summary.
            message, args: the full line.
            summary: how the summary names the kind ("model 'm' rejected requests: queue full").
            exc_info: the exception whose traceback the full line carries.
            extra: ``extra=`` fields of the full line.
        """
        with self._lock:
            window = self._windows.get(kind)
            if window is not None:
                window.count += 1
                return False
            if len(self._windows) >= _MAX_KINDS:
                return False
            window = self._windows[kind] = _Window(summary or kind, level)
            self._arm(kind, window)
        self._log.log(level, message, *args, exc_info=exc_info, extra=extra)
        return True

    def _arm(self, kind: str, window: _Window) -> None:
        timer = threading.Timer(self.interval, self._close, args=(kind,))
        timer.daemon = True
        window.timer = timer
        timer.start()

    def _close(self, kind: str) -> None:
        with self._lock:
            window = self._windows.get(kind)
            if window is None:
                return
            count = window.count
            if not count:  # quiet: the next occurrence is logged in full
                del self._windows[kind]
                return
            window.count = 0
            self._arm(kind, window)  # keep counting: at most one line per interval
        self._log.log(window.level, "%s: %d more in the last %g s", window.summary, count, self.interval)

    def flush(self) -> None:
        """Log what is counted now and forget every window (stop, tests)."""
        with self._lock:
            windows = list(self._windows.items())
            self._windows.clear()
        for _, window in windows:
            if window.timer is not None:
                window.timer.cancel()
            if window.count:
                self._log.log(window.level, "%s: %d more (at stop)", window.summary, window.count)

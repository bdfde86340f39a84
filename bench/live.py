"""Live progress on stderr: a rich panel on a terminal, one plain line per window otherwise (CI logs).

The panel is refreshed by hand (once a second and at each window), never by rich's refresh thread, so in
the single-process mode it takes no GIL time from the load generator between refreshes.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["LiveProgress", "window_line"]


def window_line(window: dict[str, Any]) -> str:
    """One window in a line: throughput, percentiles, errors, client CPU."""
    server = window.get("server") or {}
    batch = f" batch {server['mean_batch']:.1f}" if server.get("mean_batch") else ""
    flag = " CLIENT-SATURATED" if window.get("client_saturated") else ""
    return (f"window {window['index']}: {window['throughput_infer_per_sec']:.0f} infer/s "
            f"({window['throughput_req_per_sec']:.0f} req/s) p50 {window['p50_ms']:.2f} ms "
            f"p99 {window['p99_ms']:.2f} ms errors {window['errors']} late {window['late']}{batch} "
            f"client cpu {window['client_cpu_cores']:.2f} cores{flag}")


class LiveProgress:
    """Shows the level being measured and its windows as they close."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._fancy = self.console.is_terminal
        self._live: Live | None = None
        self._target = ""
        self._label = ""
        self._status = ""
        self._windows: list[dict[str, Any]] = []

    def __enter__(self) -> LiveProgress:
        if self._fancy:
            self._live = Live(self._render(), console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False)
        for column in ("window", "infer/s", "req/s", "p50 ms", "p99 ms", "errors", "late", "batch", "client cpu"):
            table.add_column(column, justify="right")
        for w in self._windows[-12:]:
            server = w.get("server") or {}
            cpu = f"{w['client_cpu_cores']:.2f}" + (" !" if w.get("client_saturated") else "")
            table.add_row(str(w["index"]), f"{w['throughput_infer_per_sec']:.0f}", f"{w['throughput_req_per_sec']:.0f}",
                          f"{w['p50_ms']:.2f}", f"{w['p99_ms']:.2f}", str(w["errors"]), str(w["late"]),
                          f"{server['mean_batch']:.1f}" if server.get("mean_batch") else "-", cpu)
        head = Text(f"{self._target}: {self._label}  {self._status}", style="bold")
        return Group(head, table)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def level_started(self, target: str, label: str) -> None:
        self._target, self._label, self._status, self._windows = target, label, "warming up", []
        if not self._fancy:
            self.console.print(f"{target}: {label}", highlight=False)
        self._refresh()

    def tick(self, elapsed_s: float, inflight: int | None) -> None:
        self._status = f"{elapsed_s:.0f} s" + (f", {inflight} in flight" if inflight is not None else "")
        self._refresh()

    def window_done(self, window: dict[str, Any], stable: bool) -> None:
        self._windows.append(window)
        if stable:
            self._status = "stable"
        if not self._fancy:
            self.console.print("  " + window_line(window) + (" (stable)" if stable else ""), highlight=False)
        self._refresh()

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

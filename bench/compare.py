"""`tensorgate bench compare A.json B.json`: two runs side by side, level by level, with B/A ratios.

Levels are matched by concurrency or request rate; a level only one run has is shown with blanks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .report import level_key, print_table

__all__ = ["compare_reports", "main"]

_FIGURES = (("throughput_infer_per_sec", "infer/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2))


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level: each figure of A and B and the ratio B/A (None where a side is missing)."""
    left = {level_key(r): r for r in a["results"]}
    right = {level_key(r): r for r in b["results"]}
    rows = []
    for key in sorted(left.keys() | right.keys()):
        row: dict[str, Any] = {key[0]: key[1]}
        ra, rb = left.get(key), right.get(key)
        for name, _, _ in _FIGURES:
            va = ra.get(name) if ra else None
            vb = rb.get(name) if rb else None
            row[name] = (va, vb, vb / va if va and vb is not None else None)
        row["errors"] = (ra.get("errors") if ra else None, rb.get("errors") if rb else None)
        rows.append(row)
    return rows


def _cell(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str], console: Console | None = None) -> int:
    """Print the comparison of two --json reports; 2 on bad arguments."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
            console = Console(width=200)
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        console.print("usage: tensorgate bench compare A.json B.json")
        return 2
    path_a, path_b = Path(argv[0]), Path(argv[1])
    a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    rows = compare_reports(a, b)
    key = next((k for k in ("concurrency", "request_rate") if rows and k in rows[0]), "concurrency")
    table = Table(title=f"A = {path_a.name} ({a.get('url')})   B = {path_b.name} ({b.get('url')})")
    table.add_column(key.replace("_", " "), justify="right")
    for _, label, _ in _FIGURES:
        for side in ("A", "B", "B/A"):
            table.add_column(f"{label} {side}", justify="right")
    table.add_column("errors A/B", justify="right")
    for row in rows:
        cells = [f"{row[key]:g}"]
        for name, _, digits in _FIGURES:
            va, vb, ratio = row[name]
            cells += [_cell(va, digits), _cell(vb, digits), "-" if ratio is None else f"{ratio:.2f}x"]
        ea, eb = row["errors"]
        cells.append(f"{'-' if ea is None else ea}/{'-' if eb is None else eb}")
        table.add_row(*cells)
    print_table(console, table)
    return 0

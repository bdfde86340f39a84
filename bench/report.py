"""The final report of a run: a table on the terminal, and JSON and CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["CSV_COLUMNS", "level_key", "print_report", "print_table", "write_csv", "write_json"]


def print_table(console: Console, table: Table) -> None:
    """Print at the table's natural width when the console is narrower: never cut or fold a figure."""
    width = console.width
    needed = console.measure(table, options=console.options.update_width(10_000)).maximum
    if needed <= width:
        console.print(table)
        return
    console.width = needed  # rich clamps print(width=) to the console's width, so widen the console itself
    try:
        console.print(table)
    finally:
        console.width = width

CSV_COLUMNS = [
    "concurrency", "request_rate", "throughput_infer_per_sec", "throughput_req_per_sec", "p50_ms", "p90_ms",
    "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "requests", "errors", "error_rate", "late", "dropped",
    "send_lag_mean_ms", "stable", "windows_measured", "mean_batch", "server_request_us", "queue_us",
    "compute_input_us", "compute_infer_us", "compute_output_us", "client_cpu_cores", "client_saturated",
    "machine_cpu_busy", "ratio_to_echo_aio", "ratio_to_echo_thread", "ratio_to_ort_batch1",
    "ratio_to_ort_mean_batch",
]


def level_key(result: dict[str, Any]) -> tuple[str, float]:
    """("concurrency", 8) or ("request_rate", 500.0)."""
    if "request_rate" in result:
        return "request_rate", float(result["request_rate"])
    return "concurrency", float(result["concurrency"])


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    row = {k: result.get(k) for k in CSV_COLUMNS}
    for k, v in (result.get("server") or {}).items():
        if k in row:
            row[k] = v
    for k, v in (result.get("ceilings") or {}).items():
        if k in row:
            row[k] = v
    return row


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def write_csv(report: dict[str, Any], path: Path) -> None:
    """One row per level; empty cells where a figure does not apply (e.g. no server statistics)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in report["results"]:
            writer.writerow({k: ("" if v is None else v) for k, v in _flat(result).items()})


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The results table, the server-side breakdown and, with --ceiling, the ratios to the ceilings."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: do not squeeze the tables into 80 columns
            console = Console(width=200)
    results = report["results"]
    if not results:
        return
    key, _ = level_key(results[0])
    open_loop = key == "request_rate"
    title = (f"{report['model']} @ {report['url']} ({report['server']['name'] or 'server'}"
             f"{', streaming' if report['streaming'] else ''}, batch {report['batch_size']})")
    table = Table(title=title)
    columns = ["rate/s" if open_loop else "concurrency", "infer/s", "req/s", "p50 ms", "p90 ms", "p95 ms",
               "p99 ms", "p99.9 ms", "max ms", "errors"]
    if open_loop:
        columns += ["late", "dropped"]
    columns += ["client cpu", "stable"]
    for name in columns:
        table.add_column(name, justify="right")
    for r in results:
        cells = [_num(r[key], 1 if open_loop else 0), _num(r["throughput_infer_per_sec"]),
                 _num(r["throughput_req_per_sec"]), _num(r["p50_ms"], 2), _num(r["p90_ms"], 2),
                 _num(r["p95_ms"], 2), _num(r["p99_ms"], 2), _num(r["p999_ms"], 2), _num(r["max_ms"], 2),
                 str(r["errors"])]
        if open_loop:
            cells += [str(r["late"]), str(r["dropped"])]
        cpu = f"{r['client_cpu_cores']:.2f}" + (" SATURATED" if r["client_saturated"] else "")
        cells += [cpu, "yes" if r["stable"] else "no"]
        table.add_row(*cells)
    print_table(console, table)
    if any(r.get("server") for r in results):
        server = Table(title="server-side, per request (statistics extension)")
        for name in (key.replace("_", " "), "mean batch", "request us", "queue us", "compute input us",
                     "compute infer us", "compute output us", "client overhead us"):
            server.add_column(name, justify="right")
        for r in results:
            s = r.get("server") or {}
            overhead = r["mean_ms"] * 1e3 - s["server_request_us"] if s else None
            server.add_row(_num(r[key], 1 if open_loop else 0), _num(s.get("mean_batch"), 2),
                           _num(s.get("server_request_us")), _num(s.get("queue_us")), _num(s.get("compute_input_us")),
                           _num(s.get("compute_infer_us")), _num(s.get("compute_output_us")), _num(overhead))
        print_table(console, server)
    if any(r.get("ceilings") for r in results):
        ceil = Table(title="throughput as a fraction of the ceilings measured in this run")
        for name in (key.replace("_", " "), "server infer/s", "echo grpc.aio", "ratio", "echo thread", "ratio",
                     "ORT batch 1", "ratio", "ORT mean batch", "ratio"):
            ceil.add_column(name, justify="right")
        for r in results:
            c = r.get("ceilings") or {}
            ceil.add_row(
                _num(r[key], 1 if open_loop else 0), _num(r["throughput_infer_per_sec"]),
                _num((c.get("echo_aio") or {}).get("throughput_infer_per_sec")), _ratio(c.get("ratio_to_echo_aio")),
                _num((c.get("echo_thread") or {}).get("throughput_infer_per_sec")),
                _ratio(c.get("ratio_to_echo_thread")), _num(c.get("ort_batch1_infer_per_sec")),
                _ratio(c.get("ratio_to_ort_batch1")),
                f"{_num(c.get('ort_mean_batch_infer_per_sec'))} (b{c.get('ort_mean_batch', '-')})",
                _ratio(c.get("ratio_to_ort_mean_batch")))
        print_table(console, ceil)
    for r in results:
        label = f"{key.replace('_', ' ')} {r[key]:g}"
        if r["client_saturated"]:
            busiest = max([*r["client_loop_cpu_per_process"], *r.get("client_cpu_per_process", [])])
            console.print(f"[yellow]{label}: a client process used {busiest:.2f} cores: the client may be the "
                          "bottleneck; try --client-processes 2 or a second machine[/yellow]")
        if r.get("machine_saturated"):
            console.print(f"[yellow]{label}: all CPU cores were {r['machine_cpu_busy']:.0%} busy: the machine, "
                          "not only the server, limits this figure[/yellow]")
        for code, e in r["errors_by_code"].items():
            console.print(f"[red]{label}: {e['count']} x {code}: {e['first_message']}[/red]")

"""Report files parse, compare mode lines two runs up, the plot is drawn, and --ceiling adds its ratios."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from bench_support import QUICK
from rich.console import Console

from support import RunningServer
from tensorgate.bench.cli import main
from tensorgate.bench.compare import compare_reports
from tensorgate.bench.compare import main as compare_main
from tensorgate.bench.report import CSV_COLUMNS, print_report, write_csv, write_json


def _level(concurrency: int, infer: float, p50: float) -> dict[str, Any]:
    return {"concurrency": concurrency, "throughput_infer_per_sec": infer, "throughput_req_per_sec": infer,
            "p50_ms": p50, "p90_ms": p50 * 1.5, "p95_ms": p50 * 1.8, "p99_ms": p50 * 2, "p999_ms": p50 * 3,
            "max_ms": p50 * 4, "mean_ms": p50, "requests": 100, "errors": 0, "errors_by_code": {}, "error_rate": 0.0,
            "error_rate_all_windows": 0.0, "late": 0, "dropped": 0, "stable": True, "windows_measured": 3,
            "client_cpu_cores": 0.3, "client_saturated": False, "client_loop_cpu_per_process": [0.2],
            "machine_saturated": False, "server": {"mean_batch": 2.0, "server_request_us": 300.0, "queue_us": 10.0,
                                                    "compute_input_us": 1.0, "compute_infer_us": 250.0,
                                                    "compute_output_us": 1.0},
            "ceilings": None, "windows": []}


def _report(url: str, levels: list[dict[str, Any]]) -> dict[str, Any]:
    return {"url": url, "model": "mlp", "streaming": False, "batch_size": 1, "server": {"name": "x"},
            "results": levels}


def test_json_and_csv_parse(tmp_path: Path) -> None:
    report = _report("a:1", [_level(1, 900, 1.0), _level(8, 1800, 4.0)])
    write_json(report, tmp_path / "r.json")
    write_csv(report, tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text()) == report
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert list(rows[0]) == CSV_COLUMNS
    assert [float(r["throughput_infer_per_sec"]) for r in rows] == [900, 1800]
    assert rows[1]["mean_batch"] == "2.0" and rows[1]["request_rate"] == ""
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "1800" in text and "compute infer us" in text


def test_compare_two_runs(tmp_path: Path) -> None:
    a = _report("a:1", [_level(1, 1000, 1.0), _level(8, 2000, 4.0)])
    b = _report("b:2", [_level(1, 1500, 0.5), _level(32, 2500, 10.0)])
    rows = compare_reports(a, b)
    assert [r["concurrency"] for r in rows] == [1, 8, 32]
    assert rows[0]["throughput_infer_per_sec"] == (1000, 1500, 1.5)
    assert rows[0]["p50_ms"] == (1.0, 0.5, 0.5)
    assert rows[1]["throughput_infer_per_sec"] == (2000, None, None)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    console = Console(record=True, width=250)
    assert compare_main([str(tmp_path / "a.json"), str(tmp_path / "b.json")], console) == 0
    text = console.export_text()
    assert "1.50x" in text and "0.50x" in text
    assert main(["compare", str(tmp_path / "a.json")]) == 2


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from tensorgate.bench.plot import plot_report

    out = tmp_path / "run.png"
    plot_report(_report("a:1", [_level(1, 900, 1.0), _level(8, 1800, 4.0)]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ceilings_in_the_same_run(server: RunningServer, test_repository: Path, tmp_path: Path) -> None:
    """--ceiling: echo servers driven with the same load, ONNX Runtime in-process; ratios in JSON, CSV, plot."""
    pytest.importorskip("onnxruntime")
    out, csv_path, png = tmp_path / "c.json", tmp_path / "c.csv", tmp_path / "c.png"
    code = main(["--url", server.url, "--model", "mlp", "--concurrency", "2", *QUICK, "--ceiling",
                 "--model-file", str(test_repository / "mlp" / "1" / "model.onnx"), "--ceiling-seconds", "0.3",
                 "--json", str(out), "--csv", str(csv_path), "--plot", str(png)])
    assert code == 0
    report = json.loads(out.read_text())
    ceilings = report["results"][0]["ceilings"]
    for key in ("echo_aio", "echo_thread"):
        assert ceilings[key]["throughput_infer_per_sec"] > 0
        assert ceilings[f"ratio_to_{key}"] > 0
    assert ceilings["ort_batch1_infer_per_sec"] > 0 and ceilings["ratio_to_ort_batch1"] > 0
    assert ceilings["ratio_to_ort_mean_batch"] > 0
    assert "1" in report["ort_ceiling"]["infer_per_sec_by_batch"]
    assert float(next(csv.DictReader(csv_path.open()))["ratio_to_echo_aio"]) > 0
    if png.exists():
        assert png.stat().st_size > 0

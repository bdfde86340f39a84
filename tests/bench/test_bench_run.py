"""bench against real servers on loopback: tensorgate (smoke), and a toy server for the schedule and errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from bench_support import FAIL_MESSAGE, QUICK, toy_server

from support import RunningServer
from tensorgate.bench.cli import main
from tensorgate.server.cli import main as tensorgate_main


def _run(tmp_path: Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp_path / "run.json"
    code = main([*QUICK, *args, "--json", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_smoke_against_tensorgate(server: RunningServer, tmp_path: Path) -> None:
    """Closed loop at two levels, batch 2: table, JSON, CSV; the server's statistics are diffed per window."""
    csv_path = tmp_path / "run.csv"
    code, report = _run(tmp_path, "--url", server.url, "--model", "mlp", "--concurrency", "1,4", "-b", "2",
                        "--csv", str(csv_path))
    assert code == 0
    assert report["mode"] == "concurrency" and report["server"]["statistics"] is True
    assert [r["concurrency"] for r in report["results"]] == [1, 4]
    for level in report["results"]:
        assert level["throughput_req_per_sec"] > 0 and level["errors"] == 0
        assert level["throughput_infer_per_sec"] == pytest.approx(2 * level["throughput_req_per_sec"])
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert len(level["windows"]) == level["windows_measured"] == 3
        assert level["client_cpu_cores"] > 0
        server_side = level["server"]
        assert server_side["mean_batch"] >= 2  # requests of 2 rows each
        assert server_side["compute_infer_us"] > 0 and server_side["queue_us"] >= 0
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 4]
    assert float(rows[0]["throughput_infer_per_sec"]) == pytest.approx(report["results"][0]["throughput_infer_per_sec"])


def test_streaming_against_tensorgate(server: RunningServer, tmp_path: Path) -> None:
    code, report = _run(tmp_path, "--url", server.url, "--model", "simple", "--concurrency", "2", "--streaming",
                        "--input-data", "zero")
    assert code == 0
    assert report["streaming"] is True
    assert report["results"][0]["requests"] > 0 and report["results"][0]["errors"] == 0


def test_tensorgate_bench_subcommand(server: RunningServer, tmp_path: Path) -> None:
    """`tensorgate bench ...` forwards everything after the word to bench."""
    out = tmp_path / "cli.json"
    code = tensorgate_main(["bench", "--url", server.url, "-m", "simple", "--concurrency", "1", *QUICK,
                            "--json", str(out)])
    assert code == 0 and json.loads(out.read_text())["results"][0]["requests"] > 0
    with pytest.raises(SystemExit) as info:
        tensorgate_main(["bench", "--help"])
    assert info.value.code == 0


def test_request_rate_keeps_its_schedule(tmp_path: Path) -> None:
    """Open loop at 200/s: the measured rate is within 5 % of the schedule, at constant and Poisson spacing."""
    with toy_server() as toy:
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--request-rate", "200",
                            "--window-ms", "1000", "--max-windows", "2")
        assert code == 0
        level = report["results"][0]
        assert level["request_rate"] == 200
        assert level["throughput_req_per_sec"] == pytest.approx(200, rel=0.05)
        assert level["sent"] == pytest.approx(200 * level["duration_s"], rel=0.05)
        assert level["dropped"] == 0
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--request-rate", "200", "--poisson",
                            "--window-ms", "1000", "--max-windows", "2")
        assert code == 0
        # Poisson: 400 arrivals have a standard deviation of 5 %, so allow three
        assert report["results"][0]["throughput_req_per_sec"] == pytest.approx(200, rel=0.15)


def test_errors_are_counted_by_code(tmp_path: Path) -> None:
    """A server that refuses every other request: half the attempts fail, with UNAVAILABLE and its message."""
    with toy_server(fail_every=2) as toy:
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--concurrency", "2")
        assert code == 1  # default --max-error-rate 0
        level = report["results"][0]
        assert list(level["errors_by_code"]) == ["UNAVAILABLE"]
        assert level["errors_by_code"]["UNAVAILABLE"]["first_message"] == FAIL_MESSAGE
        assert level["errors"] == pytest.approx(level["requests"], abs=3)
        assert level["error_rate"] == pytest.approx(0.5, abs=0.01)
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--concurrency", "2", "--engine", "thread",
                            "--max-error-rate", "0.6")
        assert code == 0  # blocking calls in threads count the same way
        assert report["results"][0]["error_rate"] == pytest.approx(0.5, abs=0.01)
        assert report["results"][0]["errors_by_code"]["UNAVAILABLE"]["first_message"] == FAIL_MESSAGE
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--concurrency", "2", "--streaming",
                            "--max-error-rate", "0.6")
        assert code == 0
        level = report["results"][0]
        assert level["errors_by_code"]["STREAM_ERROR"]["first_message"] == FAIL_MESSAGE
        assert level["error_rate"] == pytest.approx(0.5, abs=0.01)


def test_request_timeouts_are_deadline_errors(server: RunningServer, tmp_path: Path) -> None:
    code, report = _run(tmp_path, "--url", server.url, "--model", "mlp", "--concurrency", "2", "--timeout-ms",
                        "0.001", "--max-error-rate", "1")
    assert code == 0
    assert "DEADLINE_EXCEEDED" in report["results"][0]["errors_by_code"]


def test_several_client_processes(tmp_path: Path) -> None:
    with toy_server() as toy:
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--concurrency", "4",
                            "--client-processes", "2")
    assert code == 0
    level = report["results"][0]
    assert level["client_processes"] == 2 and len(level["client_cpu_per_process"]) == 2
    assert level["requests"] > 0 and level["errors"] == 0


def test_shared_memory_needs_the_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with toy_server() as toy:
        code, _ = _run(tmp_path, "--url", toy.url, "--model", "toy", "--shared-memory", "system")
    assert code == 2
    assert "does not advertise the system_shared_memory extension" in capsys.readouterr().err


def test_shared_memory_when_advertised(tmp_path: Path) -> None:
    """Inputs and outputs go through registered system shared-memory regions, which are removed afterwards."""
    with toy_server(extensions=("system_shared_memory",)) as toy:
        code, report = _run(tmp_path, "--url", toy.url, "--model", "toy", "--concurrency", "2", "-b", "3",
                            "--shared-memory", "system")
        assert code == 0 and report["results"][0]["errors"] == 0
        assert toy.servicer.shm_inputs_read > 0 and toy.servicer.shm_outputs_written > 0
        assert toy.servicer.raw_input_bytes == 0  # no tensor bytes in the messages
        assert toy.servicer.regions == {}  # unregistered at the end
    assert not list(Path("/dev/shm").glob(f"tg_bench_*_{os.getpid()}_*"))  # unlinked


def test_unknown_model_and_bad_shapes_exit_2(server: RunningServer, tmp_path: Path) -> None:
    code, _ = _run(tmp_path, "--url", server.url, "--model", "no-such-model")
    assert code == 2
    code, _ = _run(tmp_path, "--url", server.url, "--model", "mlp", "-b", "1000")
    assert code == 2

"""bench.security_overhead runs its four servers and every call succeeds (headers and TLS are right)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tensorgate.bench.security_overhead import NAMES, main

pytestmark = pytest.mark.slow


def test_one_short_round_of_every_server(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert main(["--repeats", "1", "--seconds", "0.3", "--concurrency", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["median_infer_per_sec"]) == set(NAMES)
    for name in NAMES:
        (run,) = report["runs"][name]
        assert run["errors"] == 0 and run["infer_per_sec"] > 0 and run["cpu_us_per_request"] > 0, (name, run)
    assert set(report["throughput_ratios"]) == {f"{n}/open" for n in NAMES[1:]}

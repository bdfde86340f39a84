"""bench.core_compare measures every server it names, unary and streaming, with no failed call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tensorgate.bench.core_compare import main

pytestmark = pytest.mark.slow


def test_one_short_round_of_every_server(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    main(["--concurrency", "2", "--seconds", "0.3", "--sizes", "784,16,10", "--json", str(out), "--cpu",
          "--servers", "tg inline,tg process,tg frontends 2,tg process thread-reader"])
    report = json.loads(out.read_text())
    (level,) = report["levels"]
    names = {"echo aio/unary", "echo thread/unary"} | {
        f"tg {n}/{m}" for n in ("inline", "process", "frontends 2", "process thread-reader")
        for m in ("unary", "streaming")}
    assert set(level["results"]) == names
    for key, r in level["results"].items():
        assert r["errors"] == 0 and r["infer_per_sec"] > 0 and r["ratio"] > 0, (key, r)
    # --cpu splits a request's CPU between the processes: the core is its own row in process mode only
    split = {key: set(r["cpu"]["us_per_request"]) for key, r in level["results"].items()}
    assert split["tg inline/unary"] == {"front end"}
    assert {"front end", "engine core"} <= split["tg process/unary"]
    assert {"front end", "engine core"} < split["tg frontends 2/unary"]  # and the second front end
    assert all(r["cpu"]["client_us_per_request"] > 0 for r in level["results"].values())
    # the batch size the server formed, from its statistics, is what in-process ONNX Runtime is compared at
    assert all(r["mean_batch"] >= 1 for key, r in level["results"].items() if key.startswith("tg "))

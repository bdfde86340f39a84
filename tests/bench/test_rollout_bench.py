"""bench.rollout end to end, short: a rollout and a broken rollout under load fail no request."""

from __future__ import annotations

from tensorgate.bench.rollout import run


def test_rollout_bench_reports_phases_with_no_failed_request() -> None:
    result = run(concurrency=4, seconds=0.5, cycles=2, warmup=5)
    rollout = result["rollout"]
    assert rollout["total"]["failed"] == 0 and rollout["total"]["sent"] > 0
    assert rollout["served_versions_at_end"] == ["2"]  # the switch happened, the broken version 3 did not
    assert "version 3" in rollout["broken_load"]["error"]
    cycles = result["load_unload"]
    assert cycles["cycles"] == 2 and cycles["after"]["fds"] <= cycles["before"]["fds"] + 2

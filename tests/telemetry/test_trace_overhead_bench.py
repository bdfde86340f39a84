"""bench/trace_overhead.py's "no tracing code" server: the copy of this tree it makes must lose every
request-path tracing hook and nothing else, or its figures compare the wrong things."""

from __future__ import annotations

from pathlib import Path

from tensorgate.bench.trace_overhead import _without_hooks

REPO = Path(__file__).resolve().parents[2]
FILES = ("servicer.py", "servicer_sync.py", "scheduler.py", "async_scheduler.py")


def test_every_hook_goes_and_the_code_still_compiles(tmp_path: Path) -> None:
    guards = ("if self._tracer.active:", ".trace is not None:", "if _tracing.ANY_ACTIVE:")
    expected = sum(line.strip().startswith("if") and any(g in line for g in guards)
                   for name in FILES if (REPO / "server" / name).exists()
                   for line in (REPO / "server" / name).read_text().splitlines())
    tree, removed = _without_hooks(tmp_path / "copy")
    assert removed == expected >= 7
    for name in FILES:
        path = tree / "server" / name
        if path.exists():
            text = path.read_text()
            assert "_tracer.begin(" not in text and "_tracer.end(" not in text and "_tracing.record_batch(" not in text
            compile(text, str(path), "exec")

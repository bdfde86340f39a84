"""The doctor's table: one row per check, ok / skipped / FAILED, with the figures or the reason.

A check is a function returning its detail line; it raises ``Skip`` to say
plainly what it could not check and why (no GPU, no TensorRT), and any other
exception makes the row FAILED with the exception's text (this is an operator's
tool run on their own machine, so the text is theirs to read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["FAILED", "OK", "SKIPPED", "Row", "Skip", "failed", "render", "run_check"]

log = logging.getLogger("tensorgate.doctor")

OK, SKIPPED, FAILED = "ok", "skipped", "FAILED"


class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str


def run_check(rows: list[Row], name: str, fn: Callable[[], str]) -> bool:
    """Run one check and add its row.

    Returns:
        True when it passed.
    """
    try:
        rows.append(Row(name, OK, fn()))
        return True
    except Skip as exc:
        rows.append(Row(name, SKIPPED, str(exc)))
    except Exception as exc:
        log.debug("check %s failed", name, exc_info=True)
        rows.append(Row(name, FAILED, f"{type(exc).__name__}: {exc}"))
    return False


def failed(rows: Sequence[Row]) -> bool:
    return any(r.status == FAILED for r in rows)


def render(rows: Sequence[Row], title: str, footer: Sequence[str] = ()) -> str:
    """The table as text, the title first and the footer lines last."""
    width = max((len(r.check) for r in rows), default=5)
    lines = [title]
    lines += [f"  {r.check:<{width}}  {r.status:<8} {r.detail}" for r in rows]
    lines += [f"  {line}" for line in footer]
    return "\n".join(lines)

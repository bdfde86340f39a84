"""tensorgate's load tester and benchmarks: they drive servers over the wire only."""

from __future__ import annotations

__all__: list[str] = []

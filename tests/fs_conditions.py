"""Real filesystem conditions for a child process: a read-only folder, a full disk.

Tests run as root, and root ignores file modes, so ``chmod`` cannot make a
folder read-only for them. A private mount namespace can: the child runs under
``unshare --user --map-root-user --mount`` (no privilege needed where user
namespaces are allowed; the mounts vanish with the child and never reach the
host), where ``mount --bind -o ro`` makes a read-only folder and a small tmpfs
makes a full disk. Where unshare or mount is refused the tests skip, saying so.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

__all__ = ["full_disk", "needs_mount_namespace", "read_only", "snapshot", "under"]


def read_only(folder: Path) -> str:
    """The mount that makes ``folder`` read-only (a bind of itself)."""
    return f"mount --bind -o ro {shlex.quote(str(folder))} {shlex.quote(str(folder))}"


def full_disk(folder: Path, size: str = "8k") -> str:
    """The mount that puts a tmpfs of ``size`` on ``folder`` (empty: the folder's own files are hidden)."""
    return f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(folder))}"


def under(mounts: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` run in a private mount namespace after ``mounts`` succeed."""
    script = " && ".join([*mounts, 'exec "$@"'])
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *argv]


@cache
def _refusal() -> str:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(under([read_only(Path(tmp))], ["sh", "-c", f"! touch {tmp}/x 2>/dev/null"]),
                              capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"a private mount namespace is refused here: {done.stderr.strip()[:200]}"
    return ""


def needs_mount_namespace() -> None:
    """Skip the calling test where no private mount namespace (and read-only bind) can be made."""
    reason = _refusal()
    if reason:
        pytest.skip(reason)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}

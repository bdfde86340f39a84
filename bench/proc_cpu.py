"""Where a server's CPU goes: per-process and per-thread CPU time from /proc, for a benchmark window.

Linux only (reads /proc/<pid>/task/<tid>/stat); elsewhere the samples are empty. A sample covers a
process and all its descendants (the engine core, other front ends), so a window's difference splits a
request's CPU between the front end and the core.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CpuSample", "cpu_sample", "cpu_split"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# (pid, process name, tid, thread name) -> CPU seconds (user + system)
CpuSample = dict[tuple[int, str, int, str], float]


def _stat(path: Path) -> tuple[str, list[str]] | None:
    try:
        text = path.read_text()
    except OSError:  # gone between listing and reading
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    return name, text[text.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry / "stat")
            if stat is not None:
                parents[int(entry.name)] = int(stat[1][1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found.extend(frontier)
    return found


def cpu_sample(root: int) -> CpuSample:
    """CPU seconds so far of every thread of `root` and its descendants."""
    sample: CpuSample = {}
    if not Path("/proc/self/task").is_dir():
        return sample
    for pid in _descendants(root):
        process = _stat(Path(f"/proc/{pid}/stat"))
        tasks = Path(f"/proc/{pid}/task")
        if process is None or not tasks.is_dir():
            continue
        for task in tasks.iterdir():
            stat = _stat(task / "stat")
            if stat is not None:  # fields 14 and 15 (utime, stime) are at 11 and 12 after the name
                sample[(pid, process[0], int(task.name), stat[0])] = (int(stat[1][11]) + int(stat[1][12])) / _TICK
    return sample


def _role(pid: int, process: str) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{process}[{pid}]"
    if b"core.engine" in cmdline:
        return "engine core"
    return f"front end {pid}" if b"tensorgate.server" in cmdline else f"{process}[{pid}]"


def cpu_split(before: CpuSample, after: CpuSample, root: int, requests: int) -> dict[str, object]:
    """CPU µs per request: each process (the root is the front end) and its three busiest threads."""
    per_process: dict[str, float] = {}
    threads: dict[str, float] = {}
    for key, seconds in after.items():
        used = seconds - before.get(key, 0.0)
        pid, process, tid, thread = key
        role = "front end" if pid == root else _role(pid, process)
        per_process[role] = per_process.get(role, 0.0) + used
        # Python and ONNX Runtime threads all carry the process's name: the main thread (the event loop) is
        # told apart by its id, the others by theirs
        label = f"{role}: main thread" if tid == pid else f"{role}: {thread} {tid}"
        threads[label] = threads.get(label, 0.0) + used
    n = max(1, requests)
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
    return {"us_per_request": {k: round(v * 1e6 / n, 1) for k, v in per_process.items()},
            "busiest_threads_us_per_request": {k: round(v * 1e6 / n, 1) for k, v in busiest}}

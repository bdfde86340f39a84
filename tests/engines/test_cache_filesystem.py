"""The engine cache under real filesystem conditions: a read-only folder, a full disk, builders that died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fs_conditions import full_disk, needs_mount_namespace, read_only, snapshot, under

from tensorgate.engines.cache import EngineCache, cache_key

REPO_ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, logging, sys
from pathlib import Path
from tensorgate.engines.cache import EngineCache, cache_key
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
root = Path(sys.argv[1])
calls = []
def writer(payload):
    def build(folder):
        calls.append(1)
        (folder / "engine.bin").write_bytes(payload)
        return {}
    return build
cache = EngineCache(root)
out = {"writable": cache.writable, "results": []}
for name, size in json.loads(sys.argv[2]):
    fields = {"model": name}
    entry, hit = cache.get_or_build("ns", cache_key(fields), fields, writer(name.encode()[:1] * size))
    out["results"].append([hit, entry.path.is_relative_to(root), len(entry.file("engine.bin").read_bytes())])
with cache.lock("timing-x"):
    pass
out["calls"] = len(calls)
print(json.dumps(out))
"""


def _child(mounts: list[str], root: Path, builds: list[tuple[str, int]]) -> tuple[dict[str, object], str]:
    done = subprocess.run(under(mounts, [sys.executable, "-c", _CHILD, str(root), json.dumps(builds)]),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def _fill(root: Path, name: str, payload: bytes) -> Path:
    fields = {"model": name}
    entry, _ = EngineCache(root).get_or_build("ns", cache_key(fields), fields,
                                              lambda folder: (folder / "engine.bin").write_bytes(payload) and {})
    return entry.path


def test_a_read_only_cache_is_read_and_never_written(tmp_path: Path) -> None:
    needs_mount_namespace()
    root = tmp_path / "cache"
    _fill(root, "warm", b"w" * 100)
    bad = _fill(root, "bad", b"b" * 100)
    data = bytearray((bad / "engine.bin").read_bytes())
    data[3] ^= 0xFF
    (bad / "engine.bin").write_bytes(bytes(data))
    before = snapshot(root)
    out, log = _child([read_only(root)], root, [("warm", 1), ("new", 10), ("other", 10), ("new", 1), ("bad", 100)])
    assert out["writable"] is False
    warm, new, other, new_again, bad_again = out["results"]  # type: ignore[misc]
    assert warm == [True, True, 100]  # the valid entry is used where it is
    assert new == [False, False, 10] and other == [False, False, 10]  # built elsewhere
    assert new_again == [True, False, 10]  # found in the scratch folder, not built again
    assert bad_again == [False, False, 100]  # a corrupt entry is skipped, not trusted, not removed
    assert out["calls"] == 3
    assert log.count("WARNING engine cache") == 2, log  # the read-only notice once; the corrupt entry
    assert log.count("cannot be written") == 1 and "skipped (the cache is read-only)" in log
    assert snapshot(root) == before  # no lock, no .used touch, no removal: nothing written


def test_a_full_disk_degrades_to_the_scratch_folder(tmp_path: Path) -> None:
    needs_mount_namespace()
    root = tmp_path / "cache"
    root.mkdir()
    builds = [("big", 256 * 1024), ("small", 100), ("big2", 256 * 1024), ("big", 1)]
    out, log = _child([full_disk(root, "16k")], root, builds)
    assert out["writable"] is True
    big, small, big2, big_again = out["results"]  # type: ignore[misc]
    assert big == [False, False, 256 * 1024] and big2 == [False, False, 256 * 1024]
    assert big_again == [True, False, 256 * 1024]  # found in the scratch folder: not built (twice) again
    assert small == [False, True, 100]  # the cache still takes what fits
    assert log.count("WARNING engine cache") == 1, log  # one warning; the next such build is logged at INFO
    assert "could not take ns/" in log and "No space left on device" in log
    assert out["calls"] == 5  # each big build ran twice: in the cache (failed), then in the scratch folder


_BUILDER = """
import sys, time
from pathlib import Path
from tensorgate.engines.cache import EngineCache, cache_key
root, name = Path(sys.argv[1]), sys.argv[2]
fields = {"model": name}
def build(folder):
    (folder / "engine.bin").write_bytes(b"partial")
    (folder.parent / (folder.name + ".work")).mkdir()
    print(folder, flush=True)
    time.sleep(300)
    return {}
EngineCache(root).get_or_build("ns", cache_key(fields), fields, build)
"""


def test_build_folders_of_dead_builders_are_removed_when_the_cache_opens(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    procs = {
        name: subprocess.Popen([sys.executable, "-c", _BUILDER, str(root), name], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True)
        for name in ("dead", "live")
    }
    try:
        folders = {name: Path(p.stdout.readline().strip()) for name, p in procs.items()}  # type: ignore[union-attr]
        procs["dead"].send_signal(signal.SIGKILL)  # dies mid-build, as in an OOM kill
        procs["dead"].wait(30)
        young_legacy = root / ".tmp" / "0123456789abcdef.999999.cafe0123"  # named before locks named folders
        young_legacy.mkdir()
        for folder in folders.values():
            assert folder.is_dir() and Path(f"{folder}.work").is_dir()
        EngineCache(root).open()
        assert not folders["dead"].exists() and not Path(f"{folders['dead']}.work").exists()
        assert folders["live"].is_dir() and Path(f"{folders['live']}.work").is_dir()  # its builder holds the lock
        assert young_legacy.is_dir()
        os.utime(young_legacy, (0, 0))  # an old one of those goes by age, as before
        EngineCache(root).open()
        assert not young_legacy.exists() and folders["live"].is_dir()
    finally:
        for p in procs.values():
            p.kill()
            p.wait(30)

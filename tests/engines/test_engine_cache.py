"""The engine cache: keys, verified hits, corrupt entries rebuilt, one build across processes, LRU eviction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorgate.engines.cache import MANIFEST, EngineCache, cache_key

REPO_ROOT = Path(__file__).resolve().parents[2]


def _writer(payload: bytes, calls: list[int]) -> object:
    def build(folder: Path) -> dict[str, object]:
        calls.append(1)
        (folder / "engine.bin").write_bytes(payload)
        return {"note": "built"}

    return build


def test_key_is_canonical_and_sensitive() -> None:
    a = {"model": "abc", "precision": "INT8", "device": {"isa": ["avx2"], "kind": "cpu"}}
    b = {"device": {"kind": "cpu", "isa": ["avx2"]}, "precision": "INT8", "model": "abc"}
    assert cache_key(a) == cache_key(b) and len(cache_key(a)) == 64
    assert cache_key(a) != cache_key({**a, "precision": "FP16"})
    assert cache_key(a) != cache_key({**a, "device": {"isa": ["avx512f"], "kind": "cpu"}})


def test_second_lookup_is_a_hit_without_building(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    fields = {"model": "m1"}
    calls: list[int] = []
    entry, hit = cache.get_or_build("artifacts", cache_key(fields), fields, _writer(b"x" * 100, calls))  # type: ignore[arg-type]
    assert not hit and calls == [1]
    manifest = json.loads((entry.path / MANIFEST).read_text())
    assert manifest["fields"] == fields and manifest["files"]["engine.bin"]["size"] == 100
    assert manifest["metadata"] == {"note": "built"}
    again, hit = cache.get_or_build("artifacts", cache_key(fields), fields, _writer(b"y", calls))  # type: ignore[arg-type]
    assert hit and calls == [1] and again.file("engine.bin").read_bytes() == b"x" * 100


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest", "mismatch"])
def test_a_bad_entry_is_rebuilt_never_loaded(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = EngineCache(tmp_path)
    fields = {"model": "m1"}
    key = cache_key(fields)
    calls: list[int] = []
    entry, _ = cache.get_or_build("ns", key, fields, _writer(b"good" * 64, calls))  # type: ignore[arg-type]
    engine = entry.file("engine.bin")
    if damage == "flip":
        data = bytearray(engine.read_bytes())
        data[10] ^= 0xFF
        engine.write_bytes(bytes(data))
    elif damage == "truncate":
        engine.write_bytes(engine.read_bytes()[:7])
    elif damage == "delete":
        engine.unlink()
    elif damage == "manifest":
        (entry.path / MANIFEST).write_text("{not json")
    else:  # a manifest copied from another key
        manifest = json.loads((entry.path / MANIFEST).read_text())
        manifest["fields"] = {"model": "other"}
        (entry.path / MANIFEST).write_text(json.dumps(manifest))
    assert cache.lookup("ns", key) is None
    assert "will be rebuilt" in caplog.text
    rebuilt, hit = cache.get_or_build("ns", key, fields, _writer(b"good" * 64, calls))  # type: ignore[arg-type]
    assert not hit and calls == [1, 1] and rebuilt.file("engine.bin").read_bytes() == b"good" * 64


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def broken(folder: Path) -> dict[str, object]:
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_build("ns", cache_key({"a": 1}), {"a": 1}, broken)
    assert not (tmp_path / "ns" / cache_key({"a": 1})).exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


_CONCURRENT = """
import sys, time
from pathlib import Path
from tensorgate.engines.cache import EngineCache, cache_key
root, log = Path(sys.argv[1]), Path(sys.argv[2])
fields = {"model": "shared"}
def build(folder):
    with open(log, "a") as fh:
        fh.write("build\\n")
    time.sleep(1.0)  # long enough for the other process to be waiting on the lock
    (folder / "engine.bin").write_bytes(b"E" * 4096)
    return {}
entry, hit = EngineCache(root).get_or_build("ns", cache_key(fields), fields, build)
print("hit" if hit else "built", entry.file("engine.bin").stat().st_size)
"""


def test_two_processes_building_one_key_make_one_build(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tmp_path / "cache"), str(log)], cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("build") == 1
    assert outputs == ["built 4096", "hit 4096"]
    assert EngineCache(tmp_path / "cache").lookup("ns", cache_key({"model": "shared"})) is not None


def test_least_recently_used_entries_are_evicted(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path, max_bytes=10_000)
    calls: list[int] = []
    keys = []
    for i in range(3):
        fields = {"model": i}
        keys.append(cache_key(fields))
        cache.get_or_build("ns", keys[-1], fields, _writer(b"z" * 4000, calls))  # type: ignore[arg-type]
        # mtimes have coarse resolution on some filesystems: make the order explicit
        os.utime(tmp_path / "ns" / keys[-1] / ".used", (time.time() - 100 + i * 10,) * 2)
    # three 4 kB entries (plus manifests) exceed 10 kB: the oldest went when the third was built
    assert not (tmp_path / "ns" / keys[0]).exists()
    assert cache.lookup("ns", keys[1]) is not None  # a hit refreshes its last use ...
    fields = {"model": 3}
    cache.get_or_build("ns", cache_key(fields), fields, _writer(b"z" * 4000, calls))  # type: ignore[arg-type]
    assert (tmp_path / "ns" / keys[1]).exists()  # ... so the other one goes next
    assert not (tmp_path / "ns" / keys[2]).exists()


def test_key_must_match_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EngineCache(tmp_path).get_or_build("ns", "0" * 64, {"a": 1}, lambda folder: {})

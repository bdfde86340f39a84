"""A cache that never stops serving: FP32 without the cache, read-only and full caches, entries checked at load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))

from engine_models import mlp_repository_model, precision_config
from fs_conditions import full_disk, needs_mount_namespace, read_only, snapshot, under

from support import REPO_ROOT, free_port, running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.engines.cache import STATS, file_sha256
from tensorgate.server.engine_factory import EngineSettings, create_engine
from tensorgate.server.plan import read_plan

FP32 = "max_batch_size: 16\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 64])
    return np.frombuffer(stub.ModelInfer(request, timeout=30).raw_output_contents[0], np.float32).reshape(2, 10)


def _states(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


def test_an_fp32_model_never_touches_the_cache(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    mlp_repository_model(repo, "plain", FP32, calibration=False)
    mlp_repository_model(repo, "half", precision_config("FP16"))
    config = mc.ModelConfig(name="plain", max_batch_size=16)
    loaded = create_engine("plain", 1, repo / "plain" / "1" / "model.onnx", read_plan(config, 1),
                           EngineSettings(tmp_path / "c"))
    assert loaded.precision == "FP32" and not (tmp_path / "c").exists()  # no folder, no lock, no entry
    # a cache that can never be made (its parent is a file): FP32 serves, FP16 is built in a scratch folder
    (tmp_path / "file").write_text("not a folder")
    with running_server(repo, engine_cache_dir=tmp_path / "file" / "cache") as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        assert _states(stub) == {"plain": ("READY", ""), "half": ("READY", "")}
        assert _infer(stub, "plain").shape == (2, 10) and _infer(stub, "half").shape == (2, 10)


def _tamper(entry: Path, name: str) -> None:
    """Replace the numbers of every numeric initializer AND write the new sha256 and size into the manifest."""
    path = entry / name
    model = onnx.load(str(path))
    rng = np.random.default_rng(7)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            noise = (rng.standard_normal(array.shape) * 10).astype(array.dtype)
        elif array.dtype in (np.int8, np.uint8):
            noise = rng.integers(-100, 100, array.shape).astype(array.dtype)
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(noise, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"][name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    (entry / "manifest.json").write_text(json.dumps(manifest))


def test_a_tampered_entry_is_caught_at_load_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    model_dir = mlp_repository_model(tmp_path / "repo", "q", precision_config("INT8"))
    model = model_dir / "1" / "model.onnx"
    config = mc.ModelConfig(name="q", max_batch_size=16)
    config.parameters["precision_mode"].string_value = "INT8"
    settings = EngineSettings(tmp_path / "cache")
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)

    def load() -> tuple[bool, np.ndarray, str]:
        caplog.clear()
        loaded = create_engine("q", 1, model, read_plan(config, 1), settings)
        out = loaded.engine.create_instance().run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
        assert loaded.accuracy is not None and loaded.accuracy.summary() in caplog.text  # the figure logged ...
        return loaded.cache_hit, out, loaded.accuracy.source  # ... is the one this load measured

    import onnxruntime as ort

    want = ort.InferenceSession(str(model)).run(None, {"INPUT0": x})[0]
    built, good, _ = load()
    assert not built and np.abs(good - want).max() < 0.1 * np.abs(want).max()
    engine_entry = next(p.parent for p in (tmp_path / "cache").glob("cpu-*/*/manifest.json"))
    artifact_entry = next(p.parent for p in (tmp_path / "cache").glob("artifacts/*/manifest.json"))

    hit, out, source = load()  # an honest warm start: checked, and its figures are this load's
    assert hit and source == "load-check" and "on 4 load-check samples" in caplog.text
    np.testing.assert_array_equal(out, good)

    failures = STATS.snapshot()["check_failures"]
    _tamper(engine_entry, "model.optimized.onnx")  # the served graph: bytes and sha256 changed together
    hit, out, source = load()
    assert not hit and STATS.snapshot()["check_failures"] == failures + 1
    assert "fails its check (on held-back samples now: INT8 artifact refused by the accuracy gate" in caplog.text
    assert source == "holdout"  # rebuilt, so measured in full again
    np.testing.assert_array_equal(out, good)

    _tamper(artifact_entry, "model.onnx")  # the artifact, with the engine to be built from it
    for entry in (tmp_path / "cache").glob("cpu-*/*"):
        for f in sorted(entry.rglob("*"), reverse=True):
            f.unlink()
        entry.rmdir()
    hit, out, _ = load()
    assert not hit and STATS.snapshot()["check_failures"] == failures + 2
    assert caplog.text.count("fails its check") == 2  # the artifact and the engine built from it, both dropped
    np.testing.assert_array_equal(out, good)
    hit, out, source = load()  # the rebuilt entries are trusted again: a checked hit
    assert hit and source == "load-check"
    np.testing.assert_array_equal(out, good)


@contextmanager
def _server(mounts: list[str], repo: Path, env: dict[str, str], *extra: str) -> Iterator[tuple[list[str], int]]:
    """`tensorgate serve` in a private mount namespace; yields (log lines so far, port) once it serves."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", str(port), "--model-repository", str(repo),
           "--metrics-port", "0", *extra]
    proc = subprocess.Popen(under(mounts, cmd), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            lines.append(line)
            if "serving inference.GRPCInferenceService" in line or time.monotonic() > deadline:
                break
        assert "serving inference.GRPCInferenceService" in lines[-1], "".join(lines)
        yield lines, port
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines.append(out)


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TENSORGATE_CACHE_DIR", "TENSORGATE_ENGINE_CACHE_DIR", "XDG_CACHE_HOME")}
    return {**env, "HOME": str(home)}


def test_a_read_only_default_cache_serves_warm_and_cold_models(tmp_path: Path) -> None:
    needs_mount_namespace()
    repo, home = tmp_path / "repo", tmp_path / "home"
    home.mkdir()
    mlp_repository_model(repo, "warm", precision_config("INT8"))
    mlp_repository_model(repo, "cold", precision_config("FP16"))
    mlp_repository_model(repo, "plain", FP32, calibration=False)
    env = _clean_env(home)
    built = subprocess.run([sys.executable, "-m", "tensorgate.server", "build", "--model-repository", str(repo), "--model",
                            "warm"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    cache = home / ".cache" / "tensorgate" / "engines"  # the default location
    before = snapshot(home)
    assert not any(".tmp/" in p for p in before)  # no build left behind
    with _server([read_only(home)], repo, env) as (lines, port):  # a read-only root filesystem's ~/.cache
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert _states(stub) == {m: ("READY", "") for m in ("warm", "cold", "plain")}
            for model in ("warm", "cold", "plain"):
                assert _infer(stub, model).shape == (2, 10)
    log = "".join(lines)
    assert "model warm version 1: engine cache hit" in log, log
    assert "model cold version 1: engine cache miss (built)" in log
    assert log.count(f"engine cache {cache} cannot be written") == 1  # one warning, for every model
    assert snapshot(home) == before  # no lock files, no entries, nothing touched


def test_a_full_cache_disk_never_makes_a_model_unavailable(tmp_path: Path) -> None:
    needs_mount_namespace()
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    cache.mkdir()
    mlp_repository_model(repo, "half", precision_config("FP16"), sizes=(64, 512, 10))
    mlp_repository_model(repo, "quant", precision_config("INT8"), sizes=(64, 512, 10))
    with _server([full_disk(cache, "64k")], repo, _clean_env(tmp_path), "--engine-cache-dir", str(cache)) as (
            lines, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert _states(stub) == {"half": ("READY", ""), "quant": ("READY", "")}
            assert _infer(stub, "half").shape == (2, 10) and _infer(stub, "quant").shape == (2, 10)
    log = "".join(lines)
    assert f"engine cache {cache} could not take" in log, log
    assert "built it in the scratch folder" in log


def test_build_into_a_read_only_cache_fails_saying_why(tmp_path: Path) -> None:
    needs_mount_namespace()
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    cache.mkdir()
    mlp_repository_model(repo, "half", precision_config("FP16"))
    mlp_repository_model(repo, "plain", FP32, calibration=False)
    cmd = [sys.executable, "-m", "tensorgate.server", "build", "--model-repository", str(repo), "--engine-cache-dir", str(cache)]
    done = subprocess.run(under([read_only(cache)], cmd), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**_clean_env(tmp_path), "COLUMNS": "200"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAILED half version 1: built, but the engine cache {cache} could not store it" in done.stdout
    assert "1 ready (0 from the cache), 1 failed" in done.stdout  # plain FP32 needs nothing stored
    assert list(cache.iterdir()) == []


def test_a_user_without_a_home_gets_a_cache_in_the_temp_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from tensorgate.server.settings import default_cache_dir

    def no_home(cls: type[Path]) -> Path:  # what Path.home() does for a uid with no $HOME and no passwd entry
        raise RuntimeError("Could not determine home directory.")

    for name in ("TENSORGATE_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert default_cache_dir() == Path(tempfile.gettempdir()) / f"tensorgate-{os.getuid()}"

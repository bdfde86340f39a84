"""Warm-up before READY, no config field silently ignored, and `tensorgate build` as the serve-equal CI gate."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lifecycle_support import ADD_SUB_CONFIG, add_sub_repository

from support import REPO_ROOT, running_server, write_model
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.server import config_check
from tensorgate.server.model import ModelVersion, load_model_version
from tensorgate.server.repository import read_model_source


def _load(model_dir: Path, strict: bool = False) -> tuple[ModelVersion | None, str]:
    """Load version 1 the way the server does; (version, source error)."""
    source = read_model_source(model_dir, strict)
    if source.error:
        return None, source.error
    mv = load_model_version(source.name, 1, source.versions[1], source.config,
                            max_batch_size_given=source.max_batch_size_given)
    mv.stop(0)
    return mv, ""


def _warmup(inputs: str, batch_size: int = 2, count: int = 2, name: str = "w") -> str:
    return f'model_warmup [ {{ name: "{name}" batch_size: {batch_size} count: {count} {inputs} }} ]\n'


def _input(name: str, data: str) -> str:
    return f'inputs {{ key: "{name}" value: {{ data_type: TYPE_INT32 dims: [ 16 ] {data} }} }}'


def test_warmup_runs_every_kind_of_data_before_ready(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warmups = (_warmup(_input("INPUT0", "zero_data: true") + _input("INPUT1", "random_data: true"), name="a")
               .replace("]\n", "") + ", " +
               _warmup(_input("INPUT0", 'input_data_file: "x.bin"') + _input("INPUT1", "zero_data: true"),
                       count=3, name="b").replace("model_warmup [ ", ""))
    model_dir = write_model(tmp_path, "simple", ADD_SUB_CONFIG.replace("count: 1", "count: 2") + warmups)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "x.bin").write_bytes(np.arange(16, dtype=np.int32).tobytes())
    with caplog.at_level(logging.INFO):
        mv, error = _load(model_dir)
    assert not error and mv is not None and mv.reason == "unloaded"
    assert mv.warmup_runs == (2 + 3) * 2  # count per warm-up, on each of the 2 instances
    messages = [r.getMessage() for r in caplog.records]
    ready = next(i for i, m in enumerate(messages) if "version 1 READY" in m)
    warm = [i for i, m in enumerate(messages) if "warm-up" in m]
    assert len(warm) == 2 and max(warm) < ready


@pytest.mark.parametrize(
    ("warmup", "reason"),
    [
        (_warmup(_input("INPUT0", 'input_data_file: "missing.bin"') + _input("INPUT1", "zero_data: true")),
         "no file warmup/missing.bin"),
        (_warmup(_input("INPUT0", 'input_data_file: "short.bin"') + _input("INPUT1", "zero_data: true")),
         "warmup/short.bin"),
        (_warmup(_input("INPUT0", "zero_data: true")), "input(s) ['INPUT1'] are not given"),
        (_warmup(_input("INPUT0", "zero_data: true") + _input("NOPE", "zero_data: true")), "unknown input(s)"),
        (_warmup(_input("INPUT0", "zero_data: true") + _input("INPUT1", "zero_data: true"), batch_size=9),
         "batch_size 9 must be between 1 and max_batch_size 8"),
        (_warmup(_input("INPUT0", "zero_data: true") + _input("INPUT1", "zero_data: true").replace("16", "3")),
         "dims [3] do not match"),
    ],
)
def test_a_failing_warmup_fails_the_load_with_its_reason(tmp_path: Path, warmup: str, reason: str) -> None:
    model_dir = write_model(tmp_path, "simple", ADD_SUB_CONFIG + warmup)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "short.bin").write_bytes(b"\x00" * 10)
    mv, _ = _load(model_dir)
    assert mv is not None and not mv.ready and mv.engine is None
    assert mv.reason.startswith("model_warmup 'w'") and reason in mv.reason, mv.reason


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_INT32 '
         'dims: [16] input_data_file: "../../secret" } } } ]', "input_data_file"),
        ('default_model_filename: "../other/model.onnx"', "default_model_filename"),
    ],
)
def test_file_names_in_a_config_stay_inside_the_model_folder(tmp_path: Path, extra: str, field: str) -> None:
    _, error = _load(write_model(tmp_path, "simple", ADD_SUB_CONFIG + extra))
    assert field in error and "plain file name" in error


def _all_paths(descriptor: object, prefix: str = "") -> list[str]:
    return [prefix + f.name for f in descriptor.fields]  # type: ignore[attr-defined]


def test_every_model_config_field_is_classified() -> None:
    """A proto field nobody decided about would pass unseen: each is implemented, a warning or an error."""
    classified = config_check.IMPLEMENTED | set(config_check.WARNINGS) | set(config_check.ERRORS)
    by_value = {p.split("=")[0] for p in classified if "=" in p}
    known = {p.split("=")[0] for p in classified} | by_value
    top = _all_paths(mc.ModelConfig.DESCRIPTOR)
    assert [f for f in top if f not in known and f.split(".")[0] not in ("model_transaction_policy",
                                                                         "response_cache")] == []
    for nested, message in (("input", mc.ModelInput), ("output", mc.ModelOutput),
                            ("instance_group", mc.ModelInstanceGroup), ("optimization", mc.ModelOptimizationPolicy)):
        missing = [p for p in _all_paths(message.DESCRIPTOR, nested + ".") if p not in known]
        assert missing == [], missing


@pytest.mark.parametrize(
    ("extra", "kind", "text"),
    [
        ("response_cache { enable: true }", "none", ""),
        ("model_transaction_policy { decoupled: false }\nresponse_cache { enable: false }", "none", ""),
        ('metric_tags { key: "team" value: "a" }', "warning", "metric_tags"),
        ("optimization { cuda { graphs: true } }", "warning", "optimization.cuda"),
        ("sequence_batching { }", "error", "sequence_batching: the sequence batcher is not implemented"),
        ("model_transaction_policy { decoupled: true }", "error", "decoupled models are not implemented"),
    ],
)
def test_unimplemented_fields_warn_or_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: str,
                                           kind: str, text: str) -> None:
    config = ADD_SUB_CONFIG + extra
    if "sequence_batching" in extra or "ensemble" in extra:
        config = config.replace("dynamic_batching { }", "")
    add_sub = write_model(tmp_path, "simple", config)
    findings = config_check.check_config(read_model_source(add_sub).config)
    if kind == "none":
        assert findings.warnings == findings.errors == []
        return
    with caplog.at_level(logging.WARNING), running_server(tmp_path) as srv:
        (entry,) = srv.server.registry.index()
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if kind == "warning":
        assert entry.state == "READY"
        assert any(text in m for m in logged), logged  # visible at the default log level, not only verbose
        with running_server(tmp_path, strict_model_config=True) as strict:
            (entry,) = strict.server.registry.index()
        assert entry.state == "UNAVAILABLE" and text in entry.reason and "--strict-model-config" in entry.reason
    else:
        assert entry.state == "UNAVAILABLE" and text in entry.reason


def _tensorgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tensorgate.server", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_build_fails_what_serve_refuses_with_the_same_message(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "simple", ADD_SUB_CONFIG.replace('"INPUT1"', '"x"'))
    with running_server(repo) as srv:
        (entry,) = srv.server.registry.index()
    assert entry.state == "UNAVAILABLE"
    cache = str(tmp_path / "cache")
    built = _tensorgate("build", "--model-repository", str(repo), "--engine-cache-dir", cache)
    assert built.returncode == 1
    assert f"FAILED simple version 1: {entry.reason}" in built.stdout, built.stdout
    as_json = _tensorgate("build", "--model-repository", str(repo), "--engine-cache-dir", cache, "--json")
    document = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and document["ok"] is False and document["failed"] == 1
    assert document["models"][0]["error"] == entry.reason


def test_build_reports_warnings_runs_warmup_and_honours_strict(tmp_path: Path) -> None:
    repo = add_sub_repository(tmp_path / "repo")
    config = repo / "simple" / "config.pbtxt"
    config.write_text(config.read_text() + 'metric_tags { key: "team" value: "a" }\n'
                      + _warmup(_input("INPUT0", "zero_data: true") + _input("INPUT1", "zero_data: true")))
    cache = str(tmp_path / "cache")
    built = _tensorgate("build", "--model-repository", str(repo), "--engine-cache-dir", cache, "--json")
    document = json.loads(built.stdout)
    assert built.returncode == 0 and document["ok"] is True, built.stdout + built.stderr
    (row,) = document["models"]
    assert row["warmup_runs"] == 2 and any("metric_tags" in w for w in row["warnings"])
    strict = _tensorgate("build", "--model-repository", str(repo), "--engine-cache-dir", cache,
                         "--strict-model-config")
    assert strict.returncode == 1 and "--strict-model-config" in strict.stdout

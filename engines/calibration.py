"""Calibration data: ``<model>/calibration/*.npz``, one array per model input.

Each file holds one batch: arrays named after the model's inputs, sharing their
first (batch) dimension when the model batches; files may differ in the other
variable dims (a text model's sequence length). Every sample has an index in
file order; every ``holdout_every``-th sample is held back from calibration and
used only by the accuracy gate, so the gate measures error on data the
quantizer did not see.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import EngineLoadError

__all__ = ["CALIBRATION_DIR", "CalibrationError", "CalibrationSet", "load_calibration"]

CALIBRATION_DIR = "calibration"
Feed = dict[str, npt.NDArray[Any]]


class CalibrationError(EngineLoadError):
    """Calibration data is missing or does not fit the model."""


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration feeds and held-back feeds, each a list of batches.

    Args:
        calibrate: batches the quantizer may see.
        holdout: batches only the accuracy gate sees.
        digest: sha256 over the files' names and bytes (part of the cache key).
        files: the files read.
    """

    calibrate: list[Feed]
    holdout: list[Feed]
    digest: str
    files: tuple[Path, ...]

    @property
    def samples(self) -> int:
        return sum(_rows(f) for f in self.calibrate) + sum(_rows(f) for f in self.holdout)

    def all_feeds(self) -> list[Feed]:
        """Every batch, for gates of artifacts that were not calibrated (FP16, INT8 dynamic)."""
        return [*self.calibrate, *self.holdout]


def _rows(feed: Mapping[str, npt.NDArray[Any]]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def calibration_files(model_dir: Path) -> list[Path]:
    folder = Path(model_dir) / CALIBRATION_DIR
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def calibration_digest(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _read(path: Path, inputs: Mapping[str, np.dtype[Any]]) -> Feed:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CalibrationError(f"calibration file {path.name} cannot be read: {exc}") from exc
    missing = sorted(set(inputs) - set(arrays))
    extra = sorted(set(arrays) - set(inputs))
    if missing or extra:
        raise CalibrationError(
            f"calibration file {path.name} must hold one array per model input {sorted(inputs)}; "
            f"missing {missing}, unexpected {extra}"
        )
    feed: Feed = {}
    for name, dtype in inputs.items():
        array = arrays[name]
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise CalibrationError(
                    f"calibration file {path.name}: '{name}' is {array.dtype}, the model takes {dtype}"
                )
            array = array.astype(dtype)
        feed[name] = np.ascontiguousarray(array)
    return feed


def _split_rows(feed: Feed) -> list[Feed]:
    n = _rows(feed)
    if any(a.ndim == 0 or a.shape[0] != n for a in feed.values()):
        raise CalibrationError("calibration arrays of one file must share their first (batch) dimension")
    return [{k: v[i : i + 1] for k, v in feed.items()} for i in range(n)]


def _merge(rows: list[Feed]) -> Feed:
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def load_calibration(
    model_dir: Path,
    inputs: Mapping[str, np.dtype[Any]],
    batching: bool,
    holdout_every: int = 4,
) -> CalibrationSet | None:
    """Read a model's calibration data, or None when it has none.

    Args:
        model_dir: the model's folder (``<repository>/<model>``).
        inputs: model input names and their numpy dtypes.
        batching: the first axis of every array is the batch (split into samples).
        holdout_every: every n-th sample is held back for the accuracy gate.

    Returns:
        The set, with at least one calibration and one held-back sample.

    Raises:
        CalibrationError: a file does not match the model, or there are fewer than 2 samples.
    """
    files = calibration_files(model_dir)
    if not files:
        return None
    calibrate: list[Feed] = []
    holdout: list[Feed] = []
    index = 0
    for path in files:
        feed = _read(path, inputs)
        rows = _split_rows(feed) if batching else [feed]
        keep: list[Feed] = []
        held: list[Feed] = []
        for row in rows:
            index += 1
            (held if index % holdout_every == 0 else keep).append(row)
        # batches stay per file: rows of one file share their variable dims
        for group, out in ((keep, calibrate), (held, holdout)):
            if group:
                out.append(_merge(group) if batching else group[0])
    if not calibrate or not holdout:
        raise CalibrationError(
            f"{model_dir / CALIBRATION_DIR} holds {index} sample(s); at least 2 are needed "
            f"(every {holdout_every}th is held back for the accuracy gate)"
        )
    return CalibrationSet(calibrate, holdout, calibration_digest(files), tuple(files))


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[Feed] = iter(self._feeds)

    def get_next(self) -> Feed | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

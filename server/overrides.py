"""A RepositoryModelLoad's overrides: a JSON config and ``file:<path>`` contents, staged privately.

Triton's semantics: the ``config`` parameter (a JSON ModelConfig) replaces
config.pbtxt; ``file:<version>/<name>`` parameters carry the model's files in
the request, and then the model is loaded from those files alone (``config``
is required with them). The files go to a fresh private temporary folder
(mode 0700), never into the model repository: every path is checked first (no
absolute paths, no ``..``, no empty parts, no control characters), created
with O_EXCL|O_NOFOLLOW so nothing can be redirected through a link, and the
total is bounded before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from tensorgate.clients.pb import model_config_pb2 as mc

from .errors import InvalidArgumentError
from .names import check_relative_path
from .repository import CONFIG_FILENAME

__all__ = ["DEFAULT_MAX_FILES", "LoadOverrides", "StagedModel", "parse_overrides", "stage_files"]

DEFAULT_MAX_FILES = 256
MAX_CONFIG_CHARS = 4 << 20  # a JSON ModelConfig is kilobytes; parsing megabytes only costs the server
FILE_PREFIX = "file:"


@dataclass(frozen=True)
class LoadOverrides:
    """What a load request overrides: the config (parsed) and the files (path parts -> bytes)."""

    config: mc.ModelConfig | None = None
    max_batch_size_given: bool = False
    files: Mapping[tuple[str, ...], bytes] | None = None


@dataclass(frozen=True)
class StagedModel:
    """A model folder written from a request's files, and how to remove it."""

    model_dir: Path
    cleanup: Callable[[], None]


def _parse_config(name: str, text: object) -> tuple[mc.ModelConfig, bool]:
    if not isinstance(text, str):
        raise InvalidArgumentError("load parameter 'config' must be a string holding a JSON ModelConfig")
    if len(text) > MAX_CONFIG_CHARS:
        raise InvalidArgumentError(f"load parameter 'config' is longer than {MAX_CONFIG_CHARS} characters")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        config = json_format.ParseDict(raw, mc.ModelConfig())
    except (ValueError, json_format.ParseError) as exc:
        raise InvalidArgumentError(f"load parameter 'config' for model '{name}' is not a valid ModelConfig: "
                                   f"{str(exc)[:300]}") from None
    # proto3 cannot tell max_batch_size 0 from absent: the JSON can
    return config, "max_batch_size" in raw or "maxBatchSize" in raw


def parse_overrides(name: str, parameters: Mapping[str, object], max_bytes: int,
                    max_files: int = DEFAULT_MAX_FILES) -> LoadOverrides:
    """Check a load request's parameters; raises InvalidArgumentError before anything is written.

    Args:
        name: the (already validated) model name.
        parameters: key -> str, bytes, bool or int, as the transport decoded them.
        max_bytes: the most file bytes one request may carry.
        max_files: the most files one request may carry.
    """
    config: mc.ModelConfig | None = None
    given = False
    files: dict[tuple[str, ...], bytes] = {}
    total = 0
    for key, value in parameters.items():
        if key == "config":
            config, given = _parse_config(name, value)
        elif key.startswith(FILE_PREFIX):
            parts = check_relative_path(key[len(FILE_PREFIX):])
            if parts == (CONFIG_FILENAME,):
                raise InvalidArgumentError(f"send the config as the 'config' parameter, not as {key!r}")
            if not isinstance(value, bytes):
                raise InvalidArgumentError(f"load parameter {key[:120]!r} must be bytes (bytes_param)")
            total += len(value)
            if total > max_bytes:
                raise InvalidArgumentError(f"the load request's files exceed {max_bytes} bytes "
                                           "(--model-load-max-bytes)")
            files[parts] = value
            if len(files) > max_files:
                raise InvalidArgumentError(f"the load request carries more than {max_files} files")
        else:
            raise InvalidArgumentError(f"unknown load parameter {key[:120]!r}; expected 'config' or "
                                       "'file:<version>/<name>'")
    if files and config is None:
        raise InvalidArgumentError("file overrides need the 'config' parameter too (the model is loaded from "
                                   "the request's files alone)")
    for parts in files:  # a file cannot also be a folder of another file
        for depth in range(1, len(parts)):
            if parts[:depth] in files:
                raise InvalidArgumentError(f"file override '{'/'.join(parts[:depth])}' is also a folder")
    return LoadOverrides(config, given, files or None)


def stage_files(name: str, files: Mapping[tuple[str, ...], bytes]) -> StagedModel:
    """Write the files under a new private folder: <tmp>/<name>/<path>."""
    root = Path(tempfile.mkdtemp(prefix="tensorgate-load-"))  # 0700, owned by the server's user
    model_dir = root / name

    def cleanup() -> None:
        shutil.rmtree(root, ignore_errors=True)

    try:
        model_dir.mkdir(mode=0o700)
        for parts, content in files.items():
            folder = model_dir
            for part in parts[:-1]:
                folder = folder / part
                if not folder.exists():
                    folder.mkdir(mode=0o700)
                if folder.is_symlink() or not folder.is_dir():
                    raise InvalidArgumentError(f"file override '{'/'.join(parts)}' crosses a file")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(folder / parts[-1], flags, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
    except BaseException:
        cleanup()
        raise
    return StagedModel(model_dir, cleanup)

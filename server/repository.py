"""A model repository on disk, in Triton's layout.

    <repository>/<model>/config.pbtxt          protobuf text format of inference.ModelConfig (optional)
    <repository>/<model>/<version>/model.onnx  numeric version folders; file name from
                                               default_model_filename, else model.onnx

``config.pbtxt`` is parsed by protobuf's own text format. Which versions are
served follows the config's version_policy (latest n, all, specific), as
Triton does. Nothing here loads a model: that is the registry's job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from tensorgate.clients.pb import model_config_pb2 as mc

__all__ = ["DEFAULT_MODEL_FILENAME", "ModelSource", "read_model_source", "scan_repository", "select_versions"]

log = logging.getLogger("tensorgate.repository")

DEFAULT_MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
# proto3 cannot tell "max_batch_size: 0" from "not given"; auto-completion needs to know
_MAX_BATCH_GIVEN = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)


@dataclass
class ModelSource:
    """What the repository says about one model, before anything is loaded.

    Args:
        name: the model's folder name (and its name on the wire).
        path: the model's folder.
        config: the parsed config.pbtxt, or an empty config when there is none.
        max_batch_size_given: config.pbtxt sets max_batch_size explicitly (even to 0).
        versions: version number -> model file, for the versions the policy selects.
        error: why the model cannot load at all (bad config, no versions), else None.
    """

    name: str
    path: Path
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig)
    max_batch_size_given: bool = False
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """Apply a version policy to the numeric version folders present on disk."""
    ordered = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return ordered[-count:]


def read_model_source(model_dir: Path) -> ModelSource:
    """Read one model folder: its config and the version files its policy selects."""
    source = ModelSource(name=model_dir.name, path=model_dir)
    config_path = model_dir / CONFIG_FILENAME
    if config_path.exists():
        try:
            text = config_path.read_text(encoding="utf-8")
            text_format.Parse(text, source.config)
        except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:
            source.error = f"invalid {CONFIG_FILENAME}: {exc}"
            return source
        source.max_batch_size_given = bool(_MAX_BATCH_GIVEN.search(_strip_comments(text)))
    if source.config.name and source.config.name != source.name:
        source.error = (
            f"{CONFIG_FILENAME} names the model '{source.config.name}' but its folder is '{source.name}'"
        )
        return source
    source.config.name = source.name

    available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    selected = select_versions(source.config.version_policy, available)
    if not selected:
        policy = source.config.version_policy.WhichOneof("policy_choice") or "latest"
        source.error = (
            f"no version folder matches the version policy ({policy}); found {sorted(available) or 'none'}"
        )
        return source
    filename = source.config.default_model_filename or DEFAULT_MODEL_FILENAME
    source.versions = {v: model_dir / str(v) / filename for v in selected}
    return source


def scan_repository(repository: Path) -> list[ModelSource]:
    """Every model folder in a repository, sorted by name (hidden folders skipped)."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    sources = []
    for child in sorted(repository.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            sources.append(read_model_source(child))
    return sources

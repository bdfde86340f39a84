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

from .config_check import check_config
from .names import is_valid_model_name

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MODEL_FILENAME",
    "ModelSource",
    "complete_source",
    "model_folders",
    "read_model_source",
    "scan_repository",
    "select_versions",
]

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
        warnings: config fields that have no effect here (server.config_check).
    """

    name: str
    path: Path
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig)
    max_batch_size_given: bool = False
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


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


def read_model_source(model_dir: Path, strict: bool = False) -> ModelSource:
    """Read one model folder: its config and the version files its policy selects.

    Args:
        model_dir: the model's folder.
        strict: config fields without effect are errors (--strict-model-config), not warnings.
    """
    source = ModelSource(name=model_dir.name, path=model_dir)
    config_path = model_dir / CONFIG_FILENAME
    if config_path.exists() and not config_path.is_file():  # a link to a file is fine (Kubernetes ConfigMaps)
        source.error = f"{CONFIG_FILENAME} must be a file"
        return source
    if config_path.exists():
        try:
            text = config_path.read_text(encoding="utf-8")
            text_format.Parse(text, source.config)
        except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:
            source.error = f"invalid {CONFIG_FILENAME}: {exc}"
            return source
        source.max_batch_size_given = bool(_MAX_BATCH_GIVEN.search(_strip_comments(text)))
    return complete_source(source, strict)


def complete_source(source: ModelSource, strict: bool = False) -> ModelSource:
    """Check a source's config (name, unsupported fields) and select its versions on disk."""
    if source.config.name and source.config.name != source.name:
        source.error = (
            f"{CONFIG_FILENAME} names the model '{source.config.name}' but its folder is '{source.name}'"
        )
        return source
    source.config.name = source.name
    findings = check_config(source.config, strict)
    source.warnings = findings.warnings
    if findings.errors:
        source.error = "unsupported config: " + "; ".join(findings.errors)
        return source

    unsafe = _unsafe_file_names(source.config)
    if unsafe:
        source.error = f"{CONFIG_FILENAME}: {unsafe}"
        return source

    model_dir = source.path
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


def _unsafe_file_names(config: mc.ModelConfig) -> str:
    """File names a config gives must stay inside the model folder (no separators, no '..')."""
    named = [("default_model_filename", config.default_model_filename)]
    named += [(f"output '{o.name}' label_filename", o.label_filename) for o in config.output]
    for warmup in config.model_warmup:
        named += [(f"model_warmup '{warmup.name}' input_data_file", i.input_data_file)
                  for i in warmup.inputs.values() if i.WhichOneof("input_data_type") == "input_data_file"]
    for what, name in named:
        if name and not is_valid_model_name(name):
            return f"{what} {name[:80]!r} must be a plain file name in the model folder"
    return ""


def model_folders(repository: Path) -> list[Path]:
    """Every model folder of a repository, sorted by name; hidden and badly named folders are skipped."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    folders = []
    for child in sorted(repository.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not is_valid_model_name(child.name):
            log.warning("skipping folder %r in the model repository: not a valid model name", child.name)
            continue
        folders.append(child)
    return folders


def scan_repository(repository: Path, strict: bool = False) -> list[ModelSource]:
    """Every model folder in a repository, sorted by name (hidden folders skipped)."""
    return [read_model_source(child, strict) for child in model_folders(repository)]

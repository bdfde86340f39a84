"""Every command in the README's "Deploying" section is checked: run where it can run here, checked
against the files it names where it needs a container registry or a cluster (docker build/run,
kubectl apply). A command of a kind this test does not know fails it, so new commands get a check."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import REPO_ROOT, dockerfile_stages, tool

from support import running_server, write_model


def _section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Deploying\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", _section(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _tags_built() -> set[str]:
    tags = set()
    for command in _commands():
        words = shlex.split(command)
        if words[:2] == ["docker", "build"]:
            tags.add(words[words.index("-t") + 1])
    return tags


def _check_docker_build(words: list[str]) -> None:
    dockerfile = REPO_ROOT / words[words.index("-f") + 1]
    assert dockerfile.is_file(), dockerfile
    assert words[-1] == ".", "the build context is the repository root (the Dockerfiles COPY from it)"
    args, stages = dockerfile_stages(dockerfile)
    declared = set(args) | {a.split("=")[0] for s in stages for a in s.all("ARG")}
    for i, word in enumerate(words):
        if word == "--build-arg":
            name, _, value = words[i + 1].partition("=")
            assert name in declared, f"{dockerfile.name} declares no ARG {name}"
            if name == "BASE":
                assert value in _tags_built(), f"BASE={value} is not an image the section builds"
            if name == "MODEL_REPOSITORY":
                assert value and not value.startswith("/"), "a path inside the build context"


def _check_docker_run(words: list[str]) -> None:
    image = words[-1]
    assert image in _tags_built()
    _, stages = dockerfile_stages(REPO_ROOT / "deploy/docker/Dockerfile")
    volumes = stages[-1].all("VOLUME")[0]
    assert "--read-only" in words
    mounted = {words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-v"}
    mounted |= {words[i + 1] for i, w in enumerate(words) if w == "--tmpfs"}
    for path in re.findall(r'"(/[a-z]+)"', volumes):
        assert path in mounted, f"a read-only container needs {path} mounted"
    assert "/models" in mounted  # TENSORGATE_MODEL_REPOSITORY in the image


def _run(command: str) -> None:
    env = {**os.environ, "PATH": f"{Path(tool('kubectl')).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


@pytest.mark.parametrize("command", _commands())
def test_deploying_command(command: str) -> None:
    words = shlex.split(command.split("|")[0])
    if words[:2] == ["docker", "build"]:
        _check_docker_build(words)
    elif words[:2] == ["docker", "run"]:
        _check_docker_run(words)
    elif words[:3] == ["kubectl", "apply", "-k"]:
        _run(f"kubectl kustomize {shlex.quote(words[3])}")  # no cluster here: what apply would send
    elif words[0] in ("hadolint", "kubectl") or words[0] == "kubernetes-validate":
        _run(command)
    else:
        pytest.fail(f"no check for this README command: {command}")


def test_the_section_has_the_commands_the_issue_names() -> None:
    commands = " ".join(_commands())
    for needed in ("deploy/docker/Dockerfile ", "Dockerfile.gpu", "Dockerfile.bake", "overlays/cpu",
                   "overlays/gpu", "deploy/kserve", "hadolint", "kubernetes-validate"):
        assert needed in commands, needed


def test_client_example_reaches_replicas(tmp_path: Path) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", _section(), re.S)
    write_model(tmp_path, "m", 'name: "m"\nmax_batch_size: 8\n')
    with running_server(tmp_path) as one, running_server(tmp_path) as two, running_server(tmp_path) as three:
        ports = itertools.cycle([s.server.port for s in (one, two, three)])
        code = re.sub(r"127\.0\.0\.1:80[0-2]1", lambda _: f"127.0.0.1:{next(ports)}", code)
        code += "\nfor c in (replicas, patient, at_most_once): assert c.is_server_ready(client_timeout=10)\n"
        code += "for c in (client, replicas, patient, at_most_once): c.close()\n"
        script = tmp_path / "example.py"
        script.write_text(code)
        out = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr

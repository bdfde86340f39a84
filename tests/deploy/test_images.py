"""The container images, checked without a registry (this machine and CI cannot pull base images).

What is checked: hadolint over every Dockerfile; the shape the issue asks for (multi-stage,
pinned bases, non-root numeric USER, HEALTHCHECK through grpc.health.v1, writable paths on
volumes); and the CPU image's build stage replayed outside Docker: its COPY and RUN lines in
a temporary folder and venv, Dockerfile.bake's `tensorgate build` and the Deployment's
seed-engine-cache command after it, then the installed `tensorgate` serving the baked engines
warm and the image's HEALTHCHECK command reporting it. What is not: `docker build` itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from deploy_support import DOCKER, K8S, REPO_ROOT, dockerfile_stages, tool

from support import free_port

sys.path.insert(0, str(REPO_ROOT / "tests" / "engines"))
from engine_models import mlp_repository_model, precision_config

DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
IMAGES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]


def test_there_are_three_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.bake", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    out = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.name)
def test_image_shape(dockerfile: Path) -> None:
    args, stages = dockerfile_stages(dockerfile)
    assert [s.name for s in stages] == ["build", "runtime"]  # multi-stage: the runtime gets the venv only
    for stage in stages:
        base = args.get(stage.base.strip("${}"), stage.base)
        assert re.search(r":\d[\w.-]*$", base), f"base image {base} is not pinned to a version tag"
    runtime = stages[-1]
    assert runtime.all("USER") == ["10001:10001"]  # numeric: runAsNonRoot can verify it
    assert "COPY --from=build /opt/tensorgate /opt/tensorgate" in [f"COPY {a}" for a in runtime.all("COPY")]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert "/opt/tensorgate/healthcheck.py" in healthcheck
    assert runtime.all("VOLUME") == ['["/cache", "/tmp"]']  # what a read-only root still writes
    env = " ".join(runtime.all("ENV"))
    for setting in ("TENSORGATE_CACHE_DIR=/cache", "TENSORGATE_ENGINE_CACHE_DIR=/cache/engines", "HOME=/tmp",
                    "TENSORGATE_GRPC_ADDRESS=0.0.0.0"):
        assert setting in env
    assert runtime.all("ENTRYPOINT") == ['["tensorgate"]']
    pip_lines = [r for r in stages[0].all("RUN") if "pip install" in r]
    assert pip_lines and all("-c deploy/docker/constraints.txt" in r for r in pip_lines)


def _replay_build_stage(context: Path, venv: Path) -> None:
    """The CPU Dockerfile's build stage outside Docker: COPY into `context`, RUN there (venv path swapped)."""
    _, stages = dockerfile_stages(DOCKER / "Dockerfile")
    build = stages[0]
    env = {**os.environ}
    for setting in build.all("ENV"):
        for pair in setting.split():
            key, _, value = pair.partition("=")
            env[key] = value
    # the one liberty taken: pip may use its local cache here (an image build starts without one)
    env.pop("PIP_NO_CACHE_DIR", None)
    for copy in build.all("COPY"):
        *sources, dest = copy.split()
        for source in sources:
            src = REPO_ROOT / source
            # Docker: into a folder ("x/") a file keeps its name; a directory's contents are copied
            target = context / dest / src.name if dest.endswith("/") and src.is_file() else context / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy2(src, target)
    for run in build.all("RUN"):
        command = (run.replace("/opt/tensorgate", str(venv)).replace("--no-cache-dir ", "")
                   .replace("python -m venv", f"{sys.executable} -m venv"))
        out = subprocess.run(["bash", "-c", command], cwd=context, env=env, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, f"RUN {command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _bake_and_seed(venv: Path, repo: Path, baked: Path, cache: Path) -> str:
    """Dockerfile.bake's RUN, then the Deployment's seed-engine-cache init command, paths swapped."""
    _, (stage,) = dockerfile_stages(DOCKER / "Dockerfile.bake")
    (run,) = stage.all("RUN")
    argv = [str(venv / "bin" / a) if a == "tensorgate" else str(repo) if a == "/models" else
            str(baked) if a == "/opt/tensorgate/baked-engines" else a for a in json.loads(run)]
    built = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    (seed,) = deployment["spec"]["template"]["spec"]["initContainers"]
    command = seed["command"][-1].replace("/opt/tensorgate/baked-engines", str(baked)).replace("/cache", str(cache))
    subprocess.run(["sh", "-c", command], check=True, timeout=60)
    return built.stdout


@pytest.mark.slow
def test_cpu_image_install_steps_serve_and_pass_the_healthcheck(tmp_path: Path) -> None:
    """Install as the image does; bake a repository's engines as Dockerfile.bake does and seed them as
    the Deployment's init container does; serve from the installed venv warm; HEALTHCHECK it."""
    context, venv = tmp_path / "src", tmp_path / "opt-tensorgate"
    _replay_build_stage(context, venv)
    # every installed distribution is pinned: the image is reproducible from constraints.txt
    frozen = subprocess.run([str(venv / "bin" / "pip"), "freeze", "--exclude", "tensorgate"],
                            capture_output=True, text=True, check=True).stdout.split()
    pins = {line.lower() for line in (DOCKER / "constraints.txt").read_text().split() if "==" in line}
    assert {line.lower() for line in frozen} - pins == set()

    repo, cache = tmp_path / "models", tmp_path / "cache"
    mlp_repository_model(repo, "fp16", precision_config("FP16"))
    baked = _bake_and_seed(venv, repo, tmp_path / "baked-engines", cache)
    assert "1 ready (0 from the cache), 0 failed" in baked
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path), "TENSORGATE_GRPC_PORT": str(port),
           "TENSORGATE_MODEL_REPOSITORY": str(repo), "TENSORGATE_CACHE_DIR": str(cache),
           "TENSORGATE_ENGINE_CACHE_DIR": str(cache / "engines"), "TENSORGATE_ALLOW_METRICS": "false"}
    check = [str(venv / "bin" / "python"), str(DOCKER / "healthcheck.py")]
    server = subprocess.Popen([str(venv / "bin" / "tensorgate"), "serve"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:  # bounded: the server prints this line or exits
            lines.append(line)
            if "serving inference.GRPCInferenceService" in line:
                break
        answer = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert (answer.returncode, answer.stdout.strip()) == (0, "SERVING"), answer.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    text = "".join(lines)
    assert "model fp16 version 1: engine cache hit" in text, text  # the baked engines served warm
    assert "building the" not in text
    time.sleep(0.2)
    gone = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr

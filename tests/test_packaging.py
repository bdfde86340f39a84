"""Installing tensorgate puts one name, `tensorgate`, into site-packages, and the client needs only its own deps.

A wheel is built from this checkout and installed into a fresh venv with no extras; a user project with its own
`clients`, `server` and `bench` packages then calls a real server through `tensorgate.clients`.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import REPO_ROOT, RunningServer

pytestmark = pytest.mark.slow

_USER_SCRIPT = """
import numpy as np
import bench, clients, server                       # the user's own packages, not ours
from tensorgate.clients import InferenceClient, InferInput

assert (clients.OWNER, server.OWNER, bench.OWNER) == ("user", "user", "user")
a = InferInput("INPUT0", [1, 16], "INT32"); a.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
b = InferInput("INPUT1", [1, 16], "INT32"); b.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
result = InferenceClient("{url}").infer("simple", [a, b])
print("sum", int(result.as_numpy("OUTPUT0").sum()))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ into the source tree, and a stale build/lib there would
    # put modules deleted since into later wheels
    source = tmp_path_factory.mktemp("source") / "tensorgate"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("tensorgate-*.whl")
    return path


def test_wheel_holds_only_the_tensorgate_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tensorgate"}
    assert "tensorgate/__init__.py" not in names  # a PEP 420 namespace: other distributions may add to it
    for package in ("clients", "clients/pb", "server", "server/telemetry", "server/demo", "engines",
                    "engines/tensorrt", "bench"):
        assert f"tensorgate/{package}/__init__.py" in names, package
    assert "tensorgate/clients/pb/grpc_service_pb2.pyi" in names and "tensorgate/clients/py.typed" in names


def test_every_package_folder_is_installed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in sorted(REPO_ROOT.glob("*/**/__init__.py")):
        relative = init.relative_to(REPO_ROOT).as_posix()
        if relative.split("/")[0] in {"clients", "server", "engines", "bench"}:
            assert f"tensorgate/{relative}" in names, f"{relative}: add it to packages in setup.cfg"


def test_client_only_install_needs_only_the_client_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    required = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert required == {"grpcio", "protobuf", "numpy"}


def test_user_project_with_its_own_clients_server_bench_calls_through_tensorgate_clients(
        wheel: Path, server: RunningServer, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    project = tmp_path / "userproj"
    for package in ("clients", "server", "bench"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text('OWNER = "user"\n')
    (project / "main.py").write_text(_USER_SCRIPT.replace("{url}", server.url))
    result = subprocess.run([str(python), "main.py"], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sum {sum(range(16)) + 16}"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {p.name for p in Path(site).iterdir() if p.name.lower().startswith("tensorgate")}
    assert ours == {"tensorgate", "tensorgate-0.1.0.dist-info"}
    for generic in ("clients", "server", "engines", "bench"):
        assert not (Path(site) / generic).exists()

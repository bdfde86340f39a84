"""The checked-in generated code in clients/pb matches what protos/generate.py makes now."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_has_all_twenty_rpcs() -> None:
    from tensorgate.clients.pb import grpc_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert len(service.methods) == 20
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.output_type.name == "ModelStreamInferResponse"


def _copy_of_tree(tmp_path: Path) -> Path:
    """protos/ and clients/pb in a scratch tree: generate.py finds clients/pb beside its own folder."""
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    shutil.copytree(REPO_ROOT / "clients" / "pb", tmp_path / "clients" / "pb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_missing_generator_leaves_the_tree_intact(tmp_path: Path) -> None:
    # -S: no site-packages, so grpc_tools is missing, as in a venv with only the [server] extra
    tree = _copy_of_tree(tmp_path)
    before = _snapshot(tree / "clients" / "pb")
    for args in ([], ["--check"]):
        result = subprocess.run([sys.executable, "-S", str(tree / "protos" / "generate.py"), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "grpcio-tools" in result.stderr and "pip install -e '.[dev]'" in result.stderr
        assert _snapshot(tree / "clients" / "pb") == before
    assert sorted(p.name for p in (tree / "clients").iterdir()) == ["pb"]


def test_regeneration_swaps_in_identical_code_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tree = _copy_of_tree(tmp_path)
    before = _snapshot(tree / "clients" / "pb")
    # an earlier run stopped between its two renames: the old code is restored first
    (tree / "clients" / "pb").rename(tree / "clients" / ".pb.old")
    result = subprocess.run([sys.executable, str(tree / "protos" / "generate.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _snapshot(tree / "clients" / "pb") == before
    assert sorted(p.name for p in (tree / "clients").iterdir()) == ["pb"]


def test_nothing_generated_points_outside_the_repository() -> None:
    for path in [*(REPO_ROOT / "protos").glob("*.proto"), *(REPO_ROOT / "clients" / "pb").glob("*.py*")]:
        assert "../" not in path.read_text(), path

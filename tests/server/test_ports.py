"""Issue 12 part 4: every listening port is bound before anything slow, and a taken one fails at once.

`tensorgate serve` with a taken gRPC, HTTP or metrics port exits 1 with one log line naming the address and
the flag (no traceback), before it loads a model or builds the demo repository; an endpoint that is turned
off does not need its port; --base-port moves all three off Triton's ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO_ROOT, free_port, serve_subprocess
from tensorgate.server.cli import _resolve_ports, build_parser
from tensorgate.server.demo.repository import demo_repository_path


@pytest.fixture()
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _serve(*args: str, timeout: float = 60) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tensorgate.server", "serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ})
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port", "--metrics-port"])
def test_a_taken_port_fails_at_once_with_one_line_naming_the_flag(
    flag: str, taken: int, tmp_path: Path, test_repository: Path
) -> None:
    ports = {"--grpc-port": str(free_port()), "--http-port": "0", "--metrics-port": "0", flag: str(taken)}
    args = [x for item in ports.items() for x in item]
    code, output, _ = _serve(*args, "--model-repository", str(test_repository))
    assert code == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"127.0.0.1:{taken} ({flag}" in errors[0], output
    assert "LOADING" not in output, f"models loaded before the port check:\n{output}"


def test_ports_are_checked_before_the_demo_repository_is_built(taken: int, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, output, _ = _serve("--grpc-port", str(taken), "--http-port", "0", "--metrics-port", "0",
                             "--cache-dir", str(cache))
    assert code == 1 and "--grpc-port" in output, output
    assert not demo_repository_path(cache).exists(), "the demo was built although the port was taken"


@pytest.mark.parametrize("off", [["--allow-http", "false"], ["--allow-metrics", "false"]])
def test_a_turned_off_endpoint_does_not_need_its_port(off: list[str], taken: int, test_repository: Path) -> None:
    flag = "--http-port" if "--allow-http" in off else "--metrics-port"
    with serve_subprocess(test_repository, flag, str(taken), *off) as (proc, _port):
        assert proc.poll() is None


def test_base_port_moves_all_three_and_explicit_flags_win() -> None:
    args = build_parser().parse_args(["serve", "--base-port", "9000", "--metrics-port", "9100"])
    _resolve_ports(args)
    assert (args.http_port, args.grpc_port, args.metrics_port) == (9000, 9001, 9100)
    args = build_parser().parse_args(["serve"])
    _resolve_ports(args)
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)  # Triton's
    with pytest.raises(SystemExit, match="base-port"):
        _resolve_ports(build_parser().parse_args(["serve", "--base-port", "65534"]))


def test_http_serves_beside_grpc_from_the_command_line(test_repository: Path) -> None:
    import httpx

    http_port = free_port()
    with serve_subprocess(test_repository, "--http-port", str(http_port), "--http-address", "127.0.0.1") as (_p, _):
        assert httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10).status_code == 200

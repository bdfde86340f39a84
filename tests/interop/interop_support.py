"""Shared pieces of the interop tests: venv paths, the server handle, the client environment."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import REPO_ROOT

INTEROP_DIR = Path(__file__).resolve().parent
SETUP_SCRIPT = INTEROP_DIR / "setup_interop.sh"
TRITONCLIENT_VENV = REPO_ROOT / ".venv-tritonclient"
PERF_ANALYZER_VENV = REPO_ROOT / ".venv-perf-analyzer"


@dataclass(frozen=True)
class InteropEnv:
    tritonclient_python: Path
    perf_analyzer: Path
    perf_analyzer_ld_library_path: str
    setup_output: str
    setup_seconds: float


@dataclass(frozen=True)
class InteropServer:
    proc: subprocess.Popen[str]
    port: int
    http_port: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """host:port of the KServe v2 REST endpoint, as tritonclient.http and perf_analyzer -i http take it."""
        return f"127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None


def client_env(**extra: str) -> dict[str, str]:
    """The environment for a client subprocess: nothing of this venv or this source tree leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env

"""The README's first lines are the two set-up commands, and its client example runs as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT, serve_subprocess


def _readme() -> str:
    return (REPO_ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    block = re.search(r"```bash\n(.*?)```", _readme(), re.S)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert "tensorgate serve" in lines[0] and "pip install" in lines[0]
    assert lines[1].startswith("bash tests/run.sh")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "tests/run.sh" in ci


def test_readme_client_example_embeds_two_sentences(tmp_path: Path) -> None:
    example = re.search(r"## A client in three lines.*?```python\n(.*?)```", _readme(), re.S)
    assert example is not None
    code = example.group(1)
    assert len([line for line in code.splitlines() if line and not line.startswith(("import", "from"))]) == 3
    home = tmp_path / "home"
    cache = home / ".cache" / "tensorgate"
    with serve_subprocess(None, "--cache-dir", str(cache)) as (_, port):
        script = tmp_path / "example.py"
        script.write_text(code.replace("127.0.0.1:8001", f"127.0.0.1:{port}"))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "HOME": str(home)},
        )
    assert result.returncode == 0, result.stderr
    similarity = float(result.stdout.split(":")[1])
    assert 0.5 < similarity < 1.0, result.stdout

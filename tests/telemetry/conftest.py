"""Fixtures of the telemetry tests: one repository for the whole package."""

from __future__ import annotations

from pathlib import Path

import pytest
from telemetry_support import telemetry_repository


@pytest.fixture(scope="session")
def telemetry_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return telemetry_repository(tmp_path_factory.mktemp("telemetry"))

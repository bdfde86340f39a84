"""Fixtures of the security tests: two certificate authorities and a small model repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from cert_support import Pki, make_pki

from support import write_model


@pytest.fixture(scope="session")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server certificate for 127.0.0.1/localhost/::1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki-alpha"), "alpha")


@pytest.fixture(scope="session")
def beta(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: the certificate a reload switches to, or a client the server must refuse."""
    return make_pki(tmp_path_factory.mktemp("pki-beta"), "beta")


@pytest.fixture(scope="session")
def security_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``simple``: INT32 add/sub, 16 wide, max_batch_size 8."""
    repo = tmp_path_factory.mktemp("security-repository")
    write_model(repo, "simple", 'name: "simple"\nmax_batch_size: 8\n')
    return repo

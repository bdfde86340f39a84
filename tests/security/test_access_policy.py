"""The transport-neutral pieces: restriction parsing, the policy's decisions, the token file, the warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tensorgate.server.security import AccessError, AccessPolicy, RefusalKind, TokenFile, parse_restriction
from tensorgate.server.security.exposure import exposure_warning, is_loopback


def test_restriction_syntax() -> None:
    r = parse_restriction("logging,trace:Admin-Key=s3cret")
    assert r.groups == {"logging", "trace"} and r.key == "admin-key" and r.value == "s3cret"
    assert r.header() == "triton-grpc-protocol-admin-key" and r.header("") == "admin-key"
    for bad in ("logging", "logging:key", "logging:=v", ":k=v", "nosuch:k=v", "logging:k=", "logging:k y=v",
                "logging:k=a\nb"):
        with pytest.raises(AccessError):
            parse_restriction(bad)


def test_a_group_restricted_twice_is_refused() -> None:
    with pytest.raises(AccessError, match="'trace' is restricted more than once"):
        AccessPolicy([parse_restriction("trace:a=1"), parse_restriction("logging,trace:b=2")])


def test_decisions() -> None:
    policy = AccessPolicy([parse_restriction("inference:k=v")])
    assert policy.active and policy.guarded("inference") and not policy.guarded("health")
    assert policy.check("health", {}) is None
    assert policy.check("inference", {"triton-grpc-protocol-k": "v"}) is None
    refusal = policy.check("inference", {"triton-grpc-protocol-k": "V"})
    assert refusal is not None and refusal.kind is RefusalKind.RESTRICTED
    assert refusal.message == "This protocol is restricted, expecting header 'triton-grpc-protocol-k'"
    assert not AccessPolicy().active  # no policy: transports install nothing
    # another transport (REST): its own header names and wording
    http = AccessPolicy([parse_restriction("inference:k=v")], header_prefix="",
                        refused_message="This API is restricted, expecting header '{header}'")
    assert http.headers == {"k"} and http.check("inference", {"k": "v"}) is None
    refusal = http.check("inference", {"triton-grpc-protocol-k": "v"})
    assert refusal is not None and refusal.message == "This API is restricted, expecting header 'k'"


def test_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("alpha\n# comment\nbeta\n")
    tokens = TokenFile(path)
    policy = AccessPolicy(tokens=tokens, token_exempt_groups=())
    assert policy.guarded("health")
    assert policy.check("metadata", {"authorization": "Bearer alpha"}) is None
    assert policy.check("metadata", {"authorization": "bearer   beta "}) is None
    for value in ("Bearer alph", "Bearer alpha2", "Basic alpha", "alpha", "Bearer # comment", ""):
        refusal = policy.check("metadata", {"authorization": value})
        assert refusal is not None and refusal.kind is RefusalKind.UNAUTHENTICATED, value
    path.write_text("")  # emptied on purpose: nobody gets in
    tokens.reload()
    assert not tokens.accepts("alpha")
    path.write_text("gamma\n")
    tokens.reload()
    assert tokens.accepts("gamma") and not tokens.accepts("alpha")
    path.unlink()  # unreadable (between an unlink and a rename): the tokens last read stay
    tokens.reload()
    assert tokens.accepts("gamma")


def test_token_file_must_exist_and_hold_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the token file"):
        TokenFile(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenFile(tmp_path / "empty")


def test_loopback() -> None:
    for address in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(address), address
    for address in ("0.0.0.0", "::", "[::]", "10.0.0.5", "example.com", ""):
        assert not is_loopback(address), address


def test_exposure_warning(tmp_path: Path) -> None:
    open_policy = AccessPolicy()
    assert exposure_warning("127.0.0.1", tls=False, policy=open_policy) is None
    line = exposure_warning("0.0.0.0", tls=False, policy=open_policy)
    assert line is not None and "\n" not in line
    assert "without TLS" in line and "logging, trace, model-repository open" in line
    partly = AccessPolicy([parse_restriction("logging,trace:k=v")])
    line = exposure_warning("0.0.0.0", tls=True, policy=partly)
    assert line is not None and "TLS" not in line.split("reachable")[1] and "model-repository open" in line
    closed = AccessPolicy([parse_restriction("logging,trace,model-repository:k=v")])
    assert exposure_warning("0.0.0.0", tls=True, policy=closed) is None
    (tmp_path / "t").write_text("x\n")
    tokens = AccessPolicy(tokens=TokenFile(tmp_path / "t"))  # tokens guard every group but health
    assert exposure_warning("::", tls=True, policy=tokens) is None


def test_the_server_logs_the_warning_once_at_start(security_repository: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Tests bind loopback only, so the address check is told 127.0.0.1 is reachable from outside."""
    from support import running_server
    from tensorgate.server.security import exposure

    with caplog.at_level(logging.WARNING, logger="tensorgate.app"), running_server(security_repository):
        pass
    assert not [r for r in caplog.records if "reachable from other hosts" in r.getMessage()]
    monkeypatch.setattr(exposure, "is_loopback", lambda address: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tensorgate.app"), running_server(security_repository):
        pass
    warnings = [r for r in caplog.records if "reachable from other hosts" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "without TLS" in warnings[0].getMessage()

"""Access control on a real server, both flavours: Triton's restricted groups and bearer tokens.

Each group gets its own key, so a refusal's message names the group the server
put the method in: the method -> group table is checked against Triton's for
every RPC, unary and streaming alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support import RunningServer, running_server
from tensorgate.clients import InferenceClient, InferenceServerError
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.security import GROUPS, RefusalKind, SecuritySettings, parse_restriction

SERVICE = "/inference.GRPCInferenceService/"
# Triton's grpc_server.cc: the group of every RPC
TRITON_GROUPS = {
    SERVICE + "ServerLive": "health",
    SERVICE + "ServerReady": "health",
    SERVICE + "ModelReady": "health",
    "/grpc.health.v1.Health/Check": "health",
    SERVICE + "ServerMetadata": "metadata",
    SERVICE + "ModelMetadata": "metadata",
    SERVICE + "ModelInfer": "inference",
    SERVICE + "ModelConfig": "model-config",
    SERVICE + "ModelStatistics": "statistics",
    SERVICE + "RepositoryIndex": "model-repository",
    SERVICE + "RepositoryModelLoad": "model-repository",
    SERVICE + "RepositoryModelUnload": "model-repository",
    SERVICE + "SystemSharedMemoryStatus": "shared-memory",
    SERVICE + "SystemSharedMemoryRegister": "shared-memory",
    SERVICE + "SystemSharedMemoryUnregister": "shared-memory",
    SERVICE + "CudaSharedMemoryStatus": "shared-memory",
    SERVICE + "CudaSharedMemoryRegister": "shared-memory",
    SERVICE + "CudaSharedMemoryUnregister": "shared-memory",
    SERVICE + "TraceSetting": "trace",
    SERVICE + "LogSettings": "logging",
}
STREAM = SERVICE + "ModelStreamInfer"


def header(group: str) -> tuple[str, str]:
    return f"triton-grpc-protocol-key-{group}", f"secret-{group}"


def refused_message(group: str) -> str:
    return f"This protocol is restricted, expecting header '{header(group)[0]}'"


@pytest.fixture(scope="module", params=["aio", "thread"])
def restricted(request: pytest.FixtureRequest, security_repository: Path) -> Iterator[RunningServer]:
    """Every group restricted, each with its own key (Triton: one --grpc-restricted-protocol per group)."""
    restrictions = tuple(parse_restriction(f"{g}:key-{g}=secret-{g}") for g in GROUPS)
    handle = RunningServer(security_repository, grpc_flavor=request.param,
                           security=SecuritySettings(restrictions=restrictions)).start()
    yield handle
    handle.stop()


def unary(channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError | None:
    call = channel.unary_unary(method)  # raw bytes: an empty body parses as an empty request
    try:
        call(b"", metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc
    return None


def stream(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> list[pb.ModelStreamInferResponse] | grpc.RpcError:
    request = pb.ModelInferRequest(model_name="no_such_model").SerializeToString()
    call = channel.stream_stream(STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString)
    try:
        return list(call(iter([request]), metadata=metadata, timeout=30))
    except grpc.RpcError as exc:
        return exc


@pytest.mark.parametrize("method", sorted(TRITON_GROUPS))
def test_each_rpc_is_refused_without_its_groups_header(restricted: RunningServer, method: str) -> None:
    group = TRITON_GROUPS[method]
    other = next(g for g in GROUPS if g != group)
    with restricted.channel() as channel:
        for metadata in ((), (header(other),), ((header(group)[0], "wrong"),)):
            error = unary(channel, method, metadata)
            assert isinstance(error, grpc.RpcError), (method, metadata)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == refused_message(group)
        # with its header the call reaches the servicer (which may answer anything but the refusal)
        error = unary(channel, method, (header(group),))
        assert error is None or error.details() != refused_message(group), (method, error)


def test_stream_infer_is_refused_like_a_unary_call(restricted: RunningServer) -> None:
    with restricted.channel() as channel:
        error = stream(channel)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == refused_message("inference")
        # with the header the stream is served: the unknown model is a per-request error on the open stream
        answers = stream(channel, (header("inference"),))
        assert isinstance(answers, list) and len(answers) == 1
        assert "no_such_model" in answers[0].error_message


def test_health_watch_and_reflection_are_guarded(restricted: RunningServer) -> None:
    with restricted.channel() as channel:
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(watch(b"", timeout=30)))
        assert caught.value.details() == refused_message("health")
        reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflect(iter([b""]), timeout=30))
        assert caught.value.details() == refused_message("metadata")


def test_our_client_passes_the_header_and_the_server_keeps_serving(restricted: RunningServer) -> None:
    with InferenceClient(restricted.url) as client:
        for _ in range(20):
            with pytest.raises(InferenceServerError, match="This protocol is restricted"):
                client.get_server_metadata()
        assert client.is_server_live(headers=dict([header("health")]))
        meta = client.get_model_metadata("simple", headers=dict([header("metadata")]))
        assert meta.name == "simple"


def test_unrestricted_groups_stay_open(security_repository: Path) -> None:
    restrictions = (parse_restriction("logging,trace,model-repository:admin=letmein"),)
    with running_server(security_repository, security=SecuritySettings(restrictions=restrictions)) as s, \
            InferenceClient(s.url) as client:
        summary = "\n".join(s.server.summary())
        assert "restricted: model-repository, trace, logging (header 'triton-grpc-protocol-admin')" in summary
        assert "letmein" not in summary
        assert client.is_server_ready()
        assert client.get_model_metadata("simple").name == "simple"
        with pytest.raises(InferenceServerError, match="expecting header 'triton-grpc-protocol-admin'"):
            log_settings(s)
        assert log_settings(s, {"triton-grpc-protocol-admin": "letmein"}).settings


# ---- bearer tokens ---------------------------------------------------------------------------------------


@pytest.fixture(params=["aio", "thread"])
def token_server(request: pytest.FixtureRequest, security_repository: Path,
                 tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nfirst-token\n\n  second-token  \n")
    security = SecuritySettings(auth_token_file=tokens,
                                restrictions=(parse_restriction("logging:admin=yes"),))
    handle = RunningServer(security_repository, grpc_flavor=request.param, security=security).start()
    yield handle, tokens
    handle.stop()


def log_settings(server: RunningServer, headers: dict[str, str] | None = None) -> pb.LogSettingsResponse:
    """LogSettings (our client has no method for it): InferenceServerError as from the client."""
    with server.channel() as channel:
        try:
            response: pb.LogSettingsResponse = pb_grpc.GRPCInferenceServiceStub(channel).LogSettings(
                pb.LogSettingsRequest(), metadata=tuple((headers or {}).items()), timeout=30)
        except grpc.RpcError as exc:
            raise InferenceServerError(exc.code(), exc.details() or "") from None
    return response


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_tokens_guard_every_group_but_health(token_server: tuple[RunningServer, Path]) -> None:
    server, tokens = token_server
    assert f"bearer tokens: 2 from {str(tokens)!r}, required on every group but health" in "\n".join(server.server.summary())
    with InferenceClient(server.url) as client, server.channel() as channel:
        assert client.is_server_live() and client.is_server_ready()  # probes need no token
        for headers in ({}, bearer("wrong"), {"authorization": "first-token"}, bearer("")):
            with pytest.raises(InferenceServerError) as caught:
                client.get_model_metadata("simple", headers=headers)
            assert caught.value.status == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.message == "missing or invalid bearer token"
        assert client.get_model_metadata("simple", headers=bearer("first-token")).name == "simple"
        refused = server.server.policy.refused()
        assert refused[("metadata", RefusalKind.UNAUTHENTICATED)] == 4
        assert client.get_model_metadata("simple", headers=bearer("second-token")).name == "simple"
        streamed = stream(channel)
        assert isinstance(streamed, grpc.RpcError) and streamed.code() == grpc.StatusCode.UNAUTHENTICATED
        # without a token, a restricted group's header name is not given away
        with pytest.raises(InferenceServerError, match="bearer token"):
            log_settings(server)
        with pytest.raises(InferenceServerError, match="expecting header 'triton-grpc-protocol-admin'"):
            log_settings(server, bearer("first-token"))
        assert log_settings(server, {**bearer("first-token"), "triton-grpc-protocol-admin": "yes"}).settings


def test_token_file_is_reread_when_it_changes(token_server: tuple[RunningServer, Path]) -> None:
    server, tokens = token_server
    replacement = tokens.with_suffix(".new")
    replacement.write_text("rotated-token\n")
    replacement.replace(tokens)
    with InferenceClient(server.url) as client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # checked at most once a second
            try:
                client.get_server_metadata(headers=bearer("rotated-token"))
                break
            except InferenceServerError:
                time.sleep(0.2)
        assert client.get_server_metadata(headers=bearer("rotated-token")).name
        with pytest.raises(InferenceServerError, match="bearer token"):
            client.get_server_metadata(headers=bearer("first-token"))


def test_refusals_are_counted_in_the_metrics(token_server: tuple[RunningServer, Path]) -> None:
    import urllib.request

    server, _ = token_server
    with InferenceClient(server.url) as client:
        for _ in range(3):
            with pytest.raises(InferenceServerError):
                client.get_server_metadata()
        with pytest.raises(InferenceServerError):
            log_settings(server, bearer("first-token"))
    metrics = server.server.telemetry.metrics
    assert metrics is not None
    with urllib.request.urlopen(metrics.url, timeout=20) as response:
        text = response.read().decode()
    assert 'tensorgate_access_refused_total{group="metadata",reason="unauthenticated"} 3.0' in text
    assert 'tensorgate_access_refused_total{group="logging",reason="restricted"} 1.0' in text

"""The README's "Compatibility with Triton" tables say what the running server does, row by row."""

from __future__ import annotations

import re

import grpc
import pytest

from support import REPO_ROOT, RunningServer
from tensorgate.clients.pb import grpc_service_pb2 as pb

STATUSES = {"supported", "partial", "not supported"}


def _table(kind: str) -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(rf"<!-- compatibility:{kind} -->\n(.*?)<!-- /compatibility:{kind} -->", text, re.S)
    assert block is not None, f"README has no compatibility:{kind} table"
    rows: dict[str, str] = {}
    for line in block.group(1).splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, status = cells[0].strip("`"), cells[1]
        assert status in STATUSES, line
        assert name not in rows, f"{name} listed twice"
        rows[name] = status
    return rows


def _call(channel: grpc.Channel, method: str) -> grpc.StatusCode:
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[method]
    request_class = getattr(pb, descriptor.input_type.name)
    response_class = getattr(pb, descriptor.output_type.name)
    path = f"/inference.GRPCInferenceService/{method}"
    try:
        if descriptor.server_streaming:
            call = channel.stream_stream(path, request_serializer=request_class.SerializeToString,
                                         response_deserializer=response_class.FromString)
            for _ in call(iter([request_class()]), timeout=10):
                break
        else:
            channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                response_deserializer=response_class.FromString)(request_class(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_rpc_is_listed_once() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(_table("rpc")) == methods


@pytest.mark.parametrize("method", sorted(_table("rpc")))
def test_rpc_row_matches_the_server(server: RunningServer, method: str) -> None:
    with server.channel() as channel:
        code = _call(channel, method)
    if _table("rpc")[method] == "not supported":
        assert code == grpc.StatusCode.UNIMPLEMENTED, f"{method} answers {code}: the README says not supported"
    else:
        assert code != grpc.StatusCode.UNIMPLEMENTED, f"{method} is UNIMPLEMENTED: the README says it works"


def test_extension_rows_match_server_metadata(server: RunningServer) -> None:
    from tensorgate.clients.cuda_runtime import load_runtime
    from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

    # rows that work only where the host has what they need (the README says which)
    host_has = {"cuda_shared_memory": load_runtime()[0] is not None}

    with server.channel() as channel:
        advertised = set(pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(pb.ServerMetadataRequest())
                         .extensions)
    table = _table("extension")
    assert advertised <= set(table), f"advertised but not in the README: {advertised - set(table)}"
    for name, status in table.items():
        assert (status != "not supported" and host_has.get(name, True)) == (name in advertised), name


def _fill(path: str) -> str:
    return path.replace("{model}", "simple").replace("{version}", "1").replace("{region}", "compat")


@pytest.mark.parametrize("route", sorted(_table("rest")))
def test_rest_row_matches_the_server(server: RunningServer, route: str) -> None:
    import httpx

    method, path = route.split(" ", 1)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        response = http.request(method, _fill(path), json={} if method == "POST" else None)
    if _table("rest")[route] == "not supported":
        assert response.status_code in (404, 501), f"{route} answers {response.status_code}: README says no"
    else:
        assert response.status_code not in (404, 405, 501), f"{route} answers {response.status_code}: {response.text}"


def _config_table(kind: str) -> set[str]:
    """The field paths of the README's config-field table whose header starts with ``kind`` (warning/error)."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### No config field silently ignored", 1)[1].split("\n### ", 1)[0]
    block = re.search(rf"\n\| {kind} \(.*?\n\|---.*?\n(.*?)(?:\n\n|$)", section, re.S)
    assert block is not None, f"README has no config {kind} table"
    paths: set[str] = set()
    for line in block.group(1).splitlines():
        cell = line.strip().strip("|").split("|")[0].strip()
        if m := re.fullmatch(r"`(\w+) \{ (\w+): (\w+) \}`", cell):
            paths.add(f"{m[1]}.{m[2]}={m[3]}")
        elif m := re.fullmatch(r"`(\w+)`: (.*)", cell):
            paths |= {f"{m[1]}.{name}" for name in re.findall(r"`(\w+)`", m[2])}
        elif m := re.fullmatch(r"`(\w+)`/`(\w+)` (.*)", cell):
            paths |= {f"{p}.{name}" for p in (m[1], m[2]) for name in re.findall(r"`(\w+)`", m[3])}
        else:
            paths |= set(re.findall(r"`([\w.]+)`", cell))
    return paths


def test_config_field_tables_match_the_load_checks() -> None:
    from tensorgate.clients.pb import model_config_pb2 as mc
    from tensorgate.server.config_check import ERRORS, IMPLEMENTED, WARNINGS

    assert _config_table("warning") == set(WARNINGS)
    assert _config_table("error") == set(ERRORS)
    classified = {p.split(".")[0].split("=")[0] for p in (*IMPLEMENTED, *WARNINGS, *ERRORS)}
    unclassified = {f.name for f in mc.ModelConfig.DESCRIPTOR.fields} - classified
    assert not unclassified, f"ModelConfig fields neither implemented nor listed: {sorted(unclassified)}"

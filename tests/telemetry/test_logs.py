"""Structured logs: formats, severity switches, the LogSettings RPC, and a real `tensorgate serve`
whose JSON log has a line per model state change and per failed request (request id and trace id)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from telemetry_support import TRACE_ID, TRACEPARENT, failing_request, simple_request, stub_for, wait_for

from support import RunningServer, serve_subprocess
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.telemetry.logs import LOGS, LogControl, model_state, request_fields


@pytest.fixture()
def control() -> Iterator[tuple[LogControl, logging.Logger, io.StringIO]]:
    logger = logging.getLogger("tensorgate-logs-test")
    logger.propagate = False
    stream = io.StringIO()
    ctl = LogControl()
    ctl.install(stream=stream, logger=logger)
    yield ctl, logger, stream
    ctl.uninstall()


def test_json_lines_carry_the_fields(control: tuple[LogControl, logging.Logger, io.StringIO]) -> None:
    ctl, logger, stream = control
    ctl.rpc(_settings(log_format="json"))
    logger.info("model m version 1 READY", extra=model_state("m", 1, "READY"))
    logger.error("request 'r' failed", extra=request_fields("r", TRACE_ID, "INTERNAL"))
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["message"] == "model m version 1 READY"
    assert (first["model"], first["version"], first["state"]) == ("m", "1", "READY")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert (second["request_id"], second["trace_id"], second["grpc_code"]) == ("r", TRACE_ID, "INTERNAL")


def test_severity_switches_and_verbose(control: tuple[LogControl, logging.Logger, io.StringIO]) -> None:
    ctl, logger, stream = control
    logger.debug("hidden debug")
    ctl.rpc(_settings(log_info=False, log_verbose_level=1))
    logger.info("hidden info")
    logger.warning("shown warning")
    logger.debug("shown debug")
    ctl.rpc(_settings(log_error=False, log_format="ISO8601"))
    logger.error("hidden error")
    logger.warning("iso warning")
    text = stream.getvalue()
    assert "hidden" not in text and "shown warning" in text and "shown debug" in text
    iso = text.splitlines()[-1]
    assert iso.split(" ", 1)[0].endswith("Z") and "WARNING tensorgate-logs-test: iso warning" in iso


def _settings(**values: Any) -> pb.LogSettingsRequest:
    request = pb.LogSettingsRequest()
    for key, v in values.items():
        if isinstance(v, bool):
            request.settings[key].bool_param = v
        elif isinstance(v, int):
            request.settings[key].uint32_param = v
        else:
            request.settings[key].string_param = v
    return request


@pytest.fixture()
def restore_logs() -> Iterator[None]:
    before = LOGS.snapshot()
    level = logging.getLogger("tensorgate").level
    yield
    LOGS.info, LOGS.warning, LOGS.error = before["log_info"], before["log_warning"], before["log_error"]
    LOGS.verbose, LOGS.format = before["log_verbose_level"], before["log_format"]
    logging.getLogger("tensorgate").setLevel(level)


@pytest.mark.usefixtures("restore_logs")
def test_log_settings_rpc_round_trip(server: RunningServer) -> None:
    stub = stub_for(server)
    defaults = stub.LogSettings(pb.LogSettingsRequest()).settings
    assert defaults["log_info"].bool_param and defaults["log_format"].string_param == "default"
    assert defaults["log_verbose_level"].uint32_param == 0
    changed = stub.LogSettings(_settings(log_verbose_level=2, log_warning=False, log_format="json")).settings
    assert changed["log_verbose_level"].uint32_param == 2 and not changed["log_warning"].bool_param
    assert changed["log_format"].string_param == "json" and changed["log_info"].bool_param
    for bad in (_settings(log_info=1), _settings(log_format="xml"), _settings(log_verbose_level="2")):
        with pytest.raises(grpc.RpcError) as info:
            stub.LogSettings(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # an embedded server (no `serve`, no installed handler) cannot move the log file
    with pytest.raises(grpc.RpcError) as info:
        stub.LogSettings(_settings(log_file="/tmp/elsewhere.log"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.LogSettings(_settings(unknown_key=True)).settings["log_verbose_level"].uint32_param == 2


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_serve_writes_structured_lines_and_obeys_log_settings(telemetry_repo: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    with serve_subprocess(telemetry_repo, "--log-format", "json", "--log-file", str(log_file),
                          "--allow-metrics", "false") as (_, port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        states = [(line["model"], line["state"]) for line in _json_lines(log_file) if "state" in line]
        assert ("simple", "LOADING") in states and ("simple", "READY") in states
        assert states.index(("simple", "LOADING")) < states.index(("simple", "READY"))

        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(failing_request("bad-1"), metadata=(("traceparent", TRACEPARENT),))
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(simple_request("late-1", model="timeouts"), metadata=(("traceparent", TRACEPARENT),))

        def failed(request_id: str) -> list[dict[str, Any]]:
            return [line for line in _json_lines(log_file) if line.get("request_id") == request_id]

        (bad,) = wait_for(lambda: failed("bad-1"))
        assert bad["level"] == "ERROR" and bad["trace_id"] == TRACE_ID and bad["grpc_code"] == "INTERNAL"
        (late,) = wait_for(lambda: failed("late-1"))
        assert late["level"] == "INFO" and late["trace_id"] == TRACE_ID and late["grpc_code"] == "DEADLINE_EXCEEDED"

        response = stub.LogSettings(_settings(log_info=False))
        assert not response.settings["log_info"].bool_param
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(simple_request("late-2", model="timeouts"))
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(failing_request("bad-2"))
        wait_for(lambda: failed("bad-2"))
        assert failed("late-2") == []  # INFO is off; ERROR still on
        channel.close()
    lines = _json_lines(log_file)
    assert not any(line["level"] == "INFO" for line in lines[lines.index(failed("bad-2")[0]):])
